"""A closed HTTP connection, downstream or upstream, is freed by reference counting: it
leaves no reference cycle for the cyclic collector (which would otherwise scan and promote
the connection, its transport and its TLS state, costing CPU per new connection and holding
memory until a full collection)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop
import yaml

from proxy.bootstrap.config import parse_bootstrap
from proxy.server import ProxyServer
from tests.ports import free_port

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CONNECTIONS = 40


def bootstrap(port: int, upstream: int) -> str:
    manager = {"@type": HCM, "stat_prefix": "garbage",
               "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                   "routes": [{"match": {"prefix": "/"},
                                                               "route": {"cluster": "answer"}}]}]},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    return yaml.safe_dump({"static_resources": {
        "listeners": [{"name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": manager}]}]}],
        "clusters": [{"name": "answer", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "answer", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}]}})


class Answer(asyncio.Protocol):
    """The upstream: answers every request with 200 and closes, so each upstream connection
    of the proxy is a new one that the upstream ends."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")  # type: ignore[attr-defined]
            self.transport.close()


async def request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: garbage\r\nconnection: close\r\n\r\n")
    answer = await reader.read(-1)
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.fixture
def collector_saves_garbage() -> Iterator[list[object]]:
    """The cyclic collector off, and what a collection finds kept for inspection."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_closed_connections_leave_no_reference_cycles(collector_saves_garbage: list[object]) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        answering = await loop.create_server(Answer, "127.0.0.1", 0)
        port = free_port()
        server = ProxyServer(parse_bootstrap(bootstrap(port, answering.sockets[0].getsockname()[1])), admin=False)
        await server.start()
        try:
            await request(port)   # what a first request sets up once (pools, caches) is not per connection
            gc.collect()
            collector_saves_garbage.clear()
            for _ in range(CONNECTIONS):
                assert (await request(port)).startswith(b"HTTP/1.1 200 OK")
            for _ in range(50):   # the proxy's side of the closes
                await asyncio.sleep(0.01)
            gc.collect()
            kinds = sorted({type(item).__qualname__ for item in collector_saves_garbage})
            assert not any(kind in ("DownstreamConnection", "UpstreamConnection") for kind in kinds), kinds
            assert len(collector_saves_garbage) < CONNECTIONS, kinds
        finally:
            await server.stop()
            answering.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
