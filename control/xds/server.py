"""tulle-control's ADS server: envoy.service.discovery.v3.AggregatedDiscoveryService on grpc.aio.

The shell around the sans-IO parts: it reads requests off each stream into that stream's
`XdsStream`, sends back the pushes it returns, and, when the mesh changes, rebuilds the
config after the `Debouncer` fires and hands each stream its node's new `ResourceSet`.

Why grpc.aio rather than the thread-pool server: an ADS stream is long-lived and idle
almost always. The sync server parks one pool thread per open stream, so 1,000 proxies
need 1,000 threads (and their stacks, and GIL hand-offs on every push); on one event loop
a stream is a coroutine, and a push to a thousand streams is a loop over them. All
protocol state is touched only from the loop's thread, so it needs no locks.

Responses are sent as bytes (`control.xds.wire`): each resource is serialized once per
change, not once per stream.

Mesh input: `upsert(doc)` / `delete(kind, namespace, name)` / `replace(docs)` — the
shape of a store's List+Watch — each arm the debouncer. `push_now()` skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import json_format

from control.caller import caller_of
from control.xds.client_authorization import may_read, may_read_status
from control.xds.client_status import client_status
from control.xds.config import MeshConfig, ResourceOverride
from control.xds.debounce import DebounceConfig, Debouncer
from control.xds.mesh import TRUST_DOMAIN, MeshDocuments, MeshSnapshot
from control.xds.node_identity import NodeIdentity
from control.xds.resources import TYPE_ALIASES, ResourceSet
from control.xds.sidecar import TranslationMemo
from control.xds.stream import Push, TypeStatus, Variant, XdsStream
from control.xds.wire import encode_delta, encode_sotw

log = logging.getLogger("tulle.control.xds")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CSDS = "envoy.service.status.v3.ClientStatusDiscoveryService"
_CONFIG_CHANGED = object()
_CLOSED = object()


@dataclass(frozen=True, slots=True)
class ProxyStatus:
    """One connected node, as `meshctl proxy-status` shows it."""

    node_id: str
    kind: str  # sidecar | proxyless | agent
    variant: str  # sotw | delta
    peer: str
    connected_at: float  # wall clock
    types: tuple[TypeStatus, ...]


class _Connection:
    __slots__ = ("connected_at", "identity", "peer", "queue", "stream", "waiting")

    def __init__(self, variant: Variant, peer: str) -> None:
        self.stream = XdsStream(variant, nonce_prefix=secrets.token_hex(3) + "-")
        self.identity: NodeIdentity | None = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.waiting = False  # a _CONFIG_CHANGED is already queued
        self.peer = peer
        self.connected_at = time.time()


class AdsServer:
    def __init__(self, debounce: DebounceConfig | None = None, trust_domain: str = TRUST_DOMAIN) -> None:
        self.trust_domain = trust_domain
        self.documents = MeshDocuments(trust_domain)
        self.override: ResourceOverride | None = None  # test hook, see control.xds.config
        self.pushes = 0  # config generations pushed
        self._memo = TranslationMemo()
        self._config = MeshConfig(MeshSnapshot(), self._memo, 0)
        self._debouncer = Debouncer(debounce or DebounceConfig())
        self._changed = asyncio.Event()
        self._connections: set[_Connection] = set()
        self._server: grpc.aio.Server | None = None
        self._debounce_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """ADS and CSDS, for any gRPC server: this one's own listeners, and tulle-control's
        API server (its root-only socket and mTLS ports). Each stream is authorized by its
        caller (`client_authorization`)."""
        ads = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                functools.partial(self._serve, Variant.SOTW),
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString, response_serializer=bytes
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                functools.partial(self._serve, Variant.DELTA),
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=bytes,
            ),
        }
        csds = {
            "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                self._fetch_client_status,
                request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
            )
        }
        return [grpc.method_handlers_generic_handler(SERVICE, ads), grpc.method_handlers_generic_handler(CSDS, csds)]

    async def start(self, address: str = "127.0.0.1:0", also: tuple[str, ...] = ()) -> int:
        """Serve on `address` and each of `also` (plaintext; "" for none, e.g. a unix:PATH
        for local tools, made 0600) and start pushing; returns the port bound for
        `address` (0 without one). With no address at all, only the servers the
        `handlers` were added to serve."""
        self._debounce_task = asyncio.create_task(self._debounce_loop())
        addresses = [a for a in (address, *also) if a]
        if not addresses:
            return 0
        self._server = grpc.aio.server(
            options=[("grpc.max_concurrent_streams", 1 << 20), ("grpc.so_reuseport", 0)]
        )
        self._server.add_generic_rpc_handlers(self.handlers())
        port = 0
        for where in addresses:
            try:
                bound = self._server.add_insecure_port(where)
            except RuntimeError as e:
                raise OSError(f"xDS: cannot listen on {where}: {e}") from None
            if bound == 0:
                raise OSError(f"xDS: cannot listen on {where}")
            if where == address:
                port = bound
        await self._server.start()
        for where in addresses:
            if where.startswith("unix:") and not where.startswith("unix:@"):
                # A unix-socket caller is trusted like root (control.caller): only root may connect.
                os.chmod(where[len("unix:"):], 0o600)
        return port

    async def stop(self, grace: float = 0.5) -> None:
        if self._debounce_task is not None:
            self._debounce_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._debounce_task
        if self._server is not None:
            await self._server.stop(grace)

    # -- mesh input ------------------------------------------------------------------

    def upsert(self, doc: Mapping[str, Any]) -> None:
        if self.documents.upsert(doc):
            self._mesh_changed()

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if self.documents.delete(kind, namespace, name):
            self._mesh_changed()

    def replace(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.documents = MeshDocuments(self.trust_domain)
        for doc in docs:
            self.documents.upsert(doc)
        self._mesh_changed()

    def push_now(self) -> None:
        """Build and push the current mesh without waiting for the debouncer."""
        self._debouncer.fire(float("inf"))
        self._rebuild()

    @property
    def config(self) -> MeshConfig:
        return self._config

    def _mesh_changed(self) -> None:
        self._debouncer.change(asyncio.get_running_loop().time())
        self._changed.set()

    async def _debounce_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            self._changed.clear()
            while (deadline := self._debouncer.deadline()) is not None:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                if self._debouncer.fire(loop.time()):
                    self._rebuild()

    def _rebuild(self) -> None:
        self._memo.next_generation()
        self._config = MeshConfig(self.documents.snapshot(), self._memo, self._config.generation + 1, self.override)
        self.pushes += 1
        for conn in self._connections:
            if conn.identity is not None and not conn.waiting:
                conn.waiting = True
                conn.queue.put_nowait(_CONFIG_CHANGED)

    # -- streams ---------------------------------------------------------------------

    async def _serve(
        self, variant: Variant, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        conn = _Connection(variant, context.peer())
        caller = caller_of(context, self.trust_domain)
        encode = encode_sotw if variant is Variant.SOTW else encode_delta
        reader = asyncio.create_task(self._read(requests, conn.queue))
        self._connections.add(conn)
        try:
            while True:
                item = await conn.queue.get()
                if item is _CLOSED:
                    return
                now = time.monotonic()
                if item is _CONFIG_CHANGED:
                    conn.waiting = False
                    assert conn.identity is not None
                    pushes = conn.stream.on_resources(self._config.resources_for(conn.identity), now)
                else:
                    if conn.identity is None and item.HasField("node"):
                        refused = may_read(NodeIdentity.from_node(item.node), caller, self._config.mesh)
                        if refused is not None:
                            log.warning("ADS stream from %s refused: %s", conn.peer, refused)
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
                    pushes = self._on_request(conn, item, now)
                for push in pushes:
                    yield encode(push)
        finally:
            self._connections.discard(conn)
            reader.cancel()

    def _on_request(self, conn: _Connection, req: Any, now: float) -> list[Push]:
        pushes: list[Push] = []
        if conn.identity is None:
            if not req.HasField("node"):
                log.warning("ADS stream from %s: first request has no node; ignored", conn.peer)
                return []
            conn.identity = NodeIdentity.from_node(req.node)
            conn.stream.node_id = conn.identity.id
            pushes = conn.stream.on_resources(self._config.resources_for(conn.identity), now)
        if conn.stream.variant is Variant.SOTW:
            pushes += conn.stream.on_sotw_request(req, now)
        else:
            pushes += conn.stream.on_delta_request(req, now)
        if req.HasField("error_detail"):
            log.warning(
                "%s NACKed %s (nonce %s): %s",
                conn.identity.id, req.type_url, req.response_nonce, req.error_detail.message,
            )
        return pushes

    @staticmethod
    async def _read(requests: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
        try:
            async for req in requests:
                queue.put_nowait(req)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            queue.put_nowait(_CLOSED)

    # -- introspection (meshctl proxy-status / proxy-config) ------------------------

    async def _fetch_client_status(
        self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext
    ) -> csds_pb2.ClientStatusResponse:
        refused = may_read_status(caller_of(context, self.trust_domain))
        if refused is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        return self.client_status(request)

    def client_status(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        nodes = sorted(
            ((c.identity, c.stream) for c in self._connections if c.identity is not None),
            key=lambda n: n[0].id,
        )
        return client_status(nodes, request, time.monotonic(), time.time())

    def status(self) -> list[ProxyStatus]:
        out = []
        for conn in self._connections:
            if conn.identity is None:
                continue
            out.append(
                ProxyStatus(
                    node_id=conn.identity.id,
                    kind=conn.identity.kind.value,
                    variant=conn.stream.variant.value,
                    peer=conn.peer,
                    connected_at=conn.connected_at,
                    types=tuple(conn.stream.status()),
                )
            )
        return sorted(out, key=lambda s: (s.node_id, s.connected_at))

    def proxy_config(self, node_id: str, kind: str) -> list[dict[str, Any]]:
        """What the control plane sends `node_id` of one resource kind (clusters,
        listeners, routes, endpoints, nodes, pods, or a type URL), as JSON objects."""
        type_url = TYPE_ALIASES.get(kind, kind)
        resources: ResourceSet | None = None
        for conn in self._connections:
            if conn.identity is not None and conn.identity.id == node_id:
                resources = conn.stream.resources
                break
        if resources is None:
            from envoy.config.core.v3 import base_pb2

            resources = self._config.resources_for(NodeIdentity.from_node(base_pb2.Node(id=node_id)))
        return [
            json_format.MessageToDict(r.message, preserving_proto_field_name=False)
            for _, r in sorted(resources.get(type_url).items())
        ]
