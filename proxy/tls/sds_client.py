"""The SDS client: TLS secrets over Envoy's SecretDiscoveryService (state of the world),
from the node agent's per-pod socket, into the SecretStore.

Rules:
- One stream per SDS cluster (`sds_config.api_config_source.grpc_services[0].envoy_grpc`
  names a static cluster; its one endpoint is a `pipe` — the pod's unix socket — or a TCP
  address). The stream subscribes to every secret name that listeners and clusters use.
- Each response is validated whole before the store changes; a bad one is NACKed with the
  path of what is wrong and the store keeps the secrets it had.
- A rotation is a new version of the same names: the store's version moves, so the next
  handshake uses the new certificate while connections in flight keep theirs.
- A broken stream is retried after 0.5 s, doubling up to 30 s; secrets already received
  keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from envoy.service.secret.v3.sds_pb2_grpc import SecretDiscoveryServiceStub

from proxy.config_error import ConfigError
from proxy.tls.secrets import SECRET, SecretStore, decode_secrets
from proxy.xds.sotw import SotwState

log = logging.getLogger("tulle.proxy.sds")


class SdsClient:
    def __init__(self, target: str, node: Node, store: SecretStore) -> None:
        self.target = target
        self.store = store
        self.state = SotwState(node)
        self.names: tuple[str, ...] = ()
        self._outbox: asyncio.Queue[DiscoveryRequest] | None = None
        self._received = asyncio.Event()
        self.responses = 0

    def subscribe(self, names: Iterable[str]) -> None:
        """Add secret names to the subscription (sent at once on a live stream)."""
        wanted = tuple(sorted(set(self.names) | set(names)))
        if wanted == self.names:
            return
        self.names = wanted
        request = self.state.subscribe(SECRET, wanted)
        if request is not None and self._outbox is not None:
            self._outbox.put_nowait(request)

    async def ready(self, names: Iterable[str]) -> None:
        """Wait until every one of `names` is in the store."""
        wanted = set(names)
        while any(self.store.get(name) is None for name in wanted):
            self._received.clear()
            await self._received.wait()

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._stream()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("SDS stream to %s failed: %s", self.target, error)
            self._outbox = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _stream(self) -> None:
        outbox: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()
        for request in self.state.resubscribe_all():
            outbox.put_nowait(request)
        self._outbox = outbox

        async def requests() -> AsyncIterator[DiscoveryRequest]:
            while True:
                yield await outbox.get()

        async with grpc.aio.insecure_channel(self.target) as channel:
            call = SecretDiscoveryServiceStub(channel).StreamSecrets(requests())
            async for response in call:
                self.responses += 1
                try:
                    secrets = decode_secrets(response)
                except ConfigError as error:
                    log.warning("SDS NACK version %s: %s", response.version_info, error)
                    outbox.put_nowait(self.state.rejected(response, str(error)))
                    continue
                self.store.update(secrets)
                outbox.put_nowait(self.state.accepted(response))
                self._received.set()
