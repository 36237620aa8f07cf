"""The tcp_proxy filter, in-process on uvloop as tulle-proxy runs it: bytes relayed unchanged
both ways (small exchanges on the transports, bulk transfers spliced by the kernel), FIN
passed on in either direction (to a TLS side as a close), the idle timeout, weighted
clusters, and Envoy's counters for every byte and connection."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

from control.ca.authority import CertificateAuthority
from proxy import tcp_proxy
from proxy.bootstrap.config import parse_bootstrap
from proxy.server import ProxyServer
from proxy.splice_pump import SplicePump
from proxy.tls.context import load_certificate
from tests.ports import free_port
from tests.tls.sidecars import (
    CATALOG,
    FRONTEND,
    NOW,
    cluster,
    endpoint,
    mtls_client_context,
    svid,
    trust,
    upstream_tls,
)

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
BULK = 8 << 20
HELD_BACK = 256 << 20   # more than every buffer on the way can hold (a 32 MiB tcp_rmem max twice)


def tcp_listener(port: int, **tcp: Any) -> dict[str, Any]:
    return {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {"@type": TCP_PROXY, "stat_prefix": "tcp", **tcp}}]}]}


def run(test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(test(), 30))


class Upstream:
    """A TCP server on loopback: echoes what it reads (or, with `greeting`, says who it is
    and then echoes), answers its client's FIN with its own, and records what it saw."""

    def __init__(self, greeting: bytes = b"", context: ssl.SSLContext | None = None) -> None:
        self.greeting = greeting
        self.context = context
        self.port = 0
        self.connections = 0
        self.finished = 0   # connections whose client sent FIN
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.greeting:
                writer.write(self.greeting)
            while data := await reader.read(1 << 20):
                writer.write(data)
                await writer.drain()
            self.finished += 1
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        assert self._server is not None
        self._server.close()


async def proxied(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> ProxyServer:
    text = yaml.safe_dump({"static_resources": {"listeners": [listener], "clusters": clusters}})
    server = ProxyServer(parse_bootstrap(text), admin=False)
    await server.start()
    return server


@contextlib.asynccontextmanager
async def echo_proxy(**listener_options: str) -> AsyncIterator[tuple[ProxyServer, Upstream, int]]:
    """A tcp_proxy listener (on the returned port) in front of one echoing upstream."""
    upstream = await Upstream().start()
    port = free_port()
    server = await proxied(tcp_listener(port, cluster="echo", **listener_options),
                           [cluster("echo", [endpoint(upstream.port)])])
    try:
        yield server, upstream, port
    finally:
        await server.stop()
        upstream.close()


def stat(server: ProxyServer, name: str) -> int:
    values = {row[0]: row[5] for row in server.stats.values()}
    return values[name]


async def exchange(port: int, payload: bytes) -> bytes:
    """Send `payload` and FIN while reading everything that comes back until the proxy's FIN."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.ensure_future(send())
    received = await reader.read(-1)
    await sending
    writer.close()
    return received


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


@pytest.fixture
def pumps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SplicePump]]:
    """Every SplicePump the relay makes."""
    made: list[SplicePump] = []

    class Recorded(SplicePump):
        __slots__ = ()

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(tcp_proxy, "SplicePump", Recorded)
    yield made


def test_small_exchanges_go_through_unchanged_and_stay_on_the_transports(pumps: list[SplicePump]) -> None:
    async def scenario() -> None:
        async with echo_proxy() as (_server, _upstream, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for message in (b"ping", b"x" * 1000, b"\x00\xff" * 10):
                writer.write(message)
                assert await reader.readexactly(len(message)) == message
            writer.close()
            assert pumps == []
    run(scenario)


def test_a_bulk_transfer_is_spliced_both_ways_and_arrives_whole(pumps: list[SplicePump]) -> None:
    async def scenario() -> None:
        async with echo_proxy() as (_server, _upstream, port):
            payload = os.urandom(BULK)
            received = await exchange(port, payload)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            assert len(pumps) == 2
    run(scenario)


def test_every_byte_counts_whether_spliced_or_not() -> None:
    async def scenario() -> None:
        upstream = await Upstream(greeting=b"hello\n").start()
        port = free_port()
        server = await proxied(tcp_listener(port, cluster="echo"), [cluster("echo", [endpoint(upstream.port)])])
        try:
            received = await exchange(port, b"a" * 10 + b"b" * BULK)
            assert len(received) == 6 + 10 + BULK
            await until(lambda: stat(server, "tcp.tcp.downstream_cx_active") == 0)
            assert stat(server, "tcp.tcp.downstream_cx_rx_bytes_total") == 10 + BULK
            assert stat(server, "tcp.tcp.downstream_cx_tx_bytes_total") == 6 + 10 + BULK
            assert stat(server, "tcp.tcp.downstream_cx_total") == 1
        finally:
            await server.stop()
            upstream.close()
    run(scenario)


def test_a_closed_pair_counts_as_one_upstream_connection_made_and_destroyed() -> None:
    async def scenario() -> None:
        async with echo_proxy() as (server, _upstream, port):
            assert await exchange(port, b"x" * BULK) == b"x" * BULK
            await until(lambda: stat(server, "cluster.echo.upstream_cx_active") == 0)
            assert stat(server, "cluster.echo.upstream_cx_total") == 1
            assert stat(server, "cluster.echo.upstream_cx_destroy") == 1
    run(scenario)


@pytest.mark.parametrize("size", [5, BULK], ids=["small", "spliced"])
def test_the_clients_fin_reaches_the_upstream_which_can_still_answer(size: int) -> None:
    async def scenario() -> None:
        async with echo_proxy() as (_server, upstream, port):
            # the echo answers only what it read; its FIN comes after the client's: the reply
            # arriving whole after our write_eof says the half-closed pair still carried it
            assert len(await exchange(port, b"z" * size)) == size
            assert upstream.finished == 1
    run(scenario)


@pytest.mark.parametrize("size", [5, BULK], ids=["small", "spliced"])
def test_the_upstreams_fin_reaches_the_client_which_can_still_send(size: int) -> None:
    async def scenario() -> None:
        received = bytearray()
        done = asyncio.get_running_loop().create_future()

        async def speak_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"q" * size)
            await writer.drain()
            writer.write_eof()
            while data := await reader.read(1 << 20):
                received.extend(data)
            writer.close()
            done.set_result(None)

        upstream = await asyncio.start_server(speak_first, "127.0.0.1", 0)
        port = free_port()
        server = await proxied(tcp_listener(port, cluster="talker"),
                               [cluster("talker", [endpoint(upstream.sockets[0].getsockname()[1])])])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert len(await reader.read(-1)) == size      # ends with the upstream's FIN
            writer.write(b"after the fin")
            await writer.drain()
            writer.write_eof()
            await done
            assert bytes(received) == b"after the fin"
            writer.close()
        finally:
            await server.stop()
            upstream.close()
    run(scenario)


@pytest.mark.parametrize("size", [5, BULK], ids=["small", "spliced"])
def test_a_silent_pair_is_closed_at_the_idle_timeout_and_counted(size: int) -> None:
    async def scenario() -> None:
        async with echo_proxy(idle_timeout="0.2s") as (server, _upstream, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"i" * size)
            assert len(await reader.readexactly(size)) == size
            assert await reader.read(-1) == b""      # then nothing: the proxy closes
            writer.close()
            assert stat(server, "tcp.tcp.idle_timeout") == 1
    run(scenario)


@pytest.mark.parametrize("direction", ["client", "upstream"])
def test_a_pair_talking_either_way_outlives_its_idle_timeout(direction: str) -> None:
    async def scenario() -> None:
        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(8):   # the upstream alone speaks, every 0.1 s for 0.8 s
                writer.write(b"t")
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.close()

        upstream = await (Upstream().start() if direction == "client" else
                          asyncio.start_server(trickle, "127.0.0.1", 0))
        upstream_port = upstream.port if isinstance(upstream, Upstream) else upstream.sockets[0].getsockname()[1]
        port = free_port()
        server = await proxied(tcp_listener(port, cluster="talk", idle_timeout="0.3s"),
                               [cluster("talk", [endpoint(upstream_port)])])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if direction == "client":
                for _ in range(8):   # the client alone speaks (the echo answers), every 0.1 s
                    writer.write(b"c")
                    assert await reader.readexactly(1) == b"c"
                    await asyncio.sleep(0.1)
            else:
                assert await reader.readexactly(8) == b"t" * 8
            assert stat(server, "tcp.tcp.idle_timeout") == 0
            writer.close()
        finally:
            await server.stop()
            upstream.close()
    run(scenario)


@pytest.mark.parametrize("chunk", [1024, 256 << 10], ids=["transports", "spliced"])
def test_a_client_writing_to_an_upstream_that_never_reads_is_held_back(chunk: int) -> None:
    """Flow control end to end: what the proxy holds is bounded (its buffer or pipe, and the
    kernel's socket buffers, far below HELD_BACK), so the client's writes block."""
    async def scenario() -> None:
        release = asyncio.Event()

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()
            writer.close()

        upstream = await asyncio.start_server(never_read, "127.0.0.1", 0)
        port = free_port()
        server = await proxied(tcp_listener(port, cluster="sink"),
                               [cluster("sink", [endpoint(upstream.sockets[0].getsockname()[1])])])
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            payload = b"w" * chunk
            sent = 0
            blocked_since: float | None = None
            while sent < HELD_BACK:
                try:
                    sent += client.send(payload)
                    blocked_since = None
                except BlockingIOError:
                    blocked_since = blocked_since or loop.time()
                    if loop.time() - blocked_since > 0.5:
                        break
                    await asyncio.sleep(0.01)
            assert sent < HELD_BACK
        finally:
            client.close()
            release.set()
            await server.stop()
            upstream.close()
    run(scenario)


def test_weighted_clusters_send_no_connection_to_a_cluster_of_weight_zero() -> None:
    async def scenario() -> None:
        heavy = await Upstream(greeting=b"heavy").start()
        never = await Upstream(greeting=b"never").start()
        port = free_port()
        weighted = {"clusters": [{"name": "heavy", "weight": 3}, {"name": "never", "weight": 0}]}
        server = await proxied(tcp_listener(port, weighted_clusters=weighted),
                               [cluster("heavy", [endpoint(heavy.port)]), cluster("never", [endpoint(never.port)])])
        try:
            for _ in range(10):
                assert await exchange(port, b"") == b"heavy"
            assert never.connections == 0
        finally:
            await server.stop()
            heavy.close()
            never.close()
    run(scenario)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


def test_over_a_tls_upstream_a_bulk_transfer_stays_on_the_transports_and_a_fin_closes_it(
        ca: CertificateAuthority, pumps: list[SplicePump]) -> None:
    async def scenario() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        pem = svid(ca, CATALOG)
        load_certificate(context, pem["certificate_chain"]["inline_string"].encode(),
                         pem["private_key"]["inline_string"].encode())
        context.load_verify_locations(cadata=trust(ca)["trusted_ca"]["inline_string"])
        upstream = await Upstream(context=context).start()
        port = free_port()
        tls = upstream_tls(mtls_client_context(ca, FRONTEND, str(CATALOG)))
        server = await proxied(tcp_listener(port, cluster="secure"),
                               [cluster("secure", [endpoint(upstream.port)], transport_socket=tls)])
        try:
            payload = os.urandom(BULK)
            # TLS cannot half-close: the client's FIN closes the upstream once flushed, so
            # what comes back is what the echo had sent by then, and the pair then ends
            received = await exchange(port, payload)
            assert payload.startswith(received)
            assert pumps == []
            await until(lambda: stat(server, "tcp.tcp.downstream_cx_active") == 0)
        finally:
            await server.stop()
            upstream.close()
    run(scenario)


def test_without_descriptors_for_a_pump_a_bulk_transfer_goes_on_over_the_transports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class OutOfDescriptors(SplicePump):
        __slots__ = ()

        def __init__(self, *args: Any) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(tcp_proxy, "SplicePump", OutOfDescriptors)

    async def scenario() -> None:
        async with echo_proxy() as (_server, _upstream, port):
            payload = os.urandom(BULK)
            assert await exchange(port, payload) == payload
    run(scenario)
