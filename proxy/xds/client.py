"""The asyncio/gRPC shell around xds/sotw.py and xds/delta.py: one ADS stream (state of
the world or delta), reconnected with back-off.

Theory of operation: requests go out through a queue feeding the stream; each response is
decoded and handed to the `Applier` (the running proxy), which validates every resource of
the response before changing anything and raises ConfigError on the first bad one. The
client then ACKs or NACKs, and subscribes to what the applied resources name (EDS for EDS
clusters, RDS for listeners with rds). A broken stream is retried after 0.5 s, doubling up to
30 s, resuming every subscription at its accepted version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc
from envoy.service.discovery.v3.ads_pb2_grpc import AggregatedDiscoveryServiceStub
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from proxy.config_error import ConfigError
from proxy.xds.delta import DeltaState
from proxy.xds.sotw import SotwState

log = logging.getLogger("tulle.proxy.xds")


class Applier(Protocol):
    async def apply(self, type_url: str, resources: Sequence[Any]) -> dict[str, tuple[str, ...]]:
        """Apply one response's resources; return subscriptions to set {type_url: names}."""
        ...


class AdsClient:
    def __init__(self, target: str, state: SotwState | DeltaState, applier: Applier,
                 initial: dict[str, tuple[str, ...]]) -> None:
        self.target = target
        self.state = state
        self.delta = isinstance(state, DeltaState)
        self.applier = applier
        for type_url, names in initial.items():
            state.subscribe(type_url, names)
        self.connected = asyncio.Event()
        self.responses = 0

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._stream()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("ADS stream to %s failed: %s", self.target, error)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _stream(self) -> None:
        outbox: asyncio.Queue[Message] = asyncio.Queue()
        for request in self.state.resubscribe_all():
            outbox.put_nowait(request)

        async def requests() -> AsyncIterator[Message]:
            while True:
                yield await outbox.get()

        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = AggregatedDiscoveryServiceStub(channel)
            call = (stub.DeltaAggregatedResources(requests()) if self.delta
                    else stub.StreamAggregatedResources(requests()))
            self.connected.set()
            async for response in call:
                await self._handle(response, outbox)

    async def _handle(self, response: DiscoveryResponse | DeltaDiscoveryResponse,
                      outbox: asyncio.Queue[Message]) -> None:
        self.responses += 1
        state = self.state
        if isinstance(state, DeltaState):
            assert isinstance(response, DeltaDiscoveryResponse)
            resources = state.candidate(response)
        else:
            assert isinstance(response, DiscoveryResponse)
            resources = list(response.resources)
        try:
            subscriptions = await self.applier.apply(response.type_url, resources)
        except ConfigError as error:
            log.warning("NACK %s nonce %s: %s", response.type_url, response.nonce, error)
            outbox.put_nowait(state.rejected(response, str(error)))
            return
        outbox.put_nowait(state.accepted(response))
        for type_url, names in subscriptions.items():
            request = self.state.subscribe(type_url, names)
            if request is not None:
                outbox.put_nowait(request)
