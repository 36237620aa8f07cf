"""HTTP/1.1 CONNECT through tulle-proxy and, as the oracle, the real Envoy with the same
bootstrap: a terminated CONNECT tunnels raw bytes both ways (the bytes sent with the head
first, a large transfer whole); a passed-through CONNECT reaches the upstream as it came and
tunnels after the upstream's 2xx. The statuses of the other cases are envoy-diff scenarios
(tests/proxy/scenarios/own-connect-*)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.config_error import ConfigError
from proxy.http.connection_manager import HttpConnectionManager
from proxy.http.downstream import DownstreamConnection
from proxy.http.hcm_config import HcmConfig
from proxy.http.headers import Headers
from proxy.http.stream import Stream
from proxy.http.tunnel import accept_request
from proxy.router.route_table import RouteTable
from tests.proxy.running import (
    ThreadedUpstream,
    cluster,
    echo_until_end,
    free_port,
    hcm_bootstrap,
    read_head,
    running_proxy,
)
from tests.proxy.test_xds import message

KINDS = ["tulle", "envoy"]


class TunnelUpstream(ThreadedUpstream):
    """A TCP server that echoes every byte; with `answer_connect`, it first reads a request
    head and answers 200 (an HTTP proxy accepting a passed-through CONNECT)."""

    timeout = 5.0

    def __init__(self, answer_connect: bool = False) -> None:
        self.answer_connect = answer_connect
        self.heads: list[bytes] = []
        self.ended: list[bytes] = []   # per connection that saw the FIN: what came before it
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        pending = b""
        if self.answer_connect:
            if (request := read_head(conn)) is None:
                return
            head, pending = request
            self.heads.append(head)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.ended.append(echo_until_end(conn, pending))


def bootstrap(port: int, upstream: int, terminate: bool, idle: str = "") -> str:
    connect_config = ", connect_config: {}" if terminate else ""
    idle_timeout = f", idle_timeout: {idle}" if idle else ""
    return hcm_bootstrap(port, f"""              - match: {{connect_matcher: {{}}}}
                route: {{cluster: tunnel{idle_timeout}, upgrade_configs: [{{upgrade_type: CONNECT{connect_config}}}]}}""",
                         cluster("tunnel", upstream), "          upgrade_configs: [{upgrade_type: CONNECT}]")


@pytest.fixture
def terminating(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    upstream = TunnelUpstream()
    port = free_port()
    try:
        with running_proxy(request.param, bootstrap(port, upstream.port, terminate=True), port, tmp_path):
            yield port
    finally:
        upstream.close()


def open_tunnel(port: int, early: bytes = b"") -> tuple[socket.socket, bytes]:
    """CONNECT (with `early` right after the head); the response head and what followed it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\n" + early)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return sock, head + b"\r\n\r\n" + rest


def read_exactly(sock: socket.socket, size: int, already: bytes = b"") -> bytes:
    data = already
    while len(data) < size:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


@pytest.mark.parametrize("terminating", KINDS, indirect=True)
def test_a_terminated_connect_tunnels_bytes_both_ways(terminating: int) -> None:
    sock, response = open_tunnel(terminating, early=b"early;")
    with sock:
        head, _, rest = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
        sock.sendall(b"later")
        assert read_exactly(sock, len(b"early;later"), rest) == b"early;later"


@pytest.mark.parametrize("terminating", KINDS, indirect=True)
def test_a_large_transfer_crosses_the_tunnel_whole(terminating: int) -> None:
    payload = bytes(range(256)) * 8192   # 2 MiB, more than any socket buffer
    sock, response = open_tunnel(terminating)
    with sock:
        rest = response.partition(b"\r\n\r\n")[2]
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        assert read_exactly(sock, len(payload), rest) == payload
        sender.join(5)


@pytest.mark.parametrize("kind", KINDS)
def test_a_passed_through_connect_reaches_the_upstream_and_tunnels_after_its_2xx(kind: str, tmp_path: Path) -> None:
    upstream = TunnelUpstream(answer_connect=True)
    port = free_port()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, terminate=False), port, tmp_path):
            sock, response = open_tunnel(port)
            with sock:
                head, _, rest = response.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")   # the proxy's own reason phrase
                sock.sendall(b"ping")
                assert read_exactly(sock, 4, rest) == b"ping"
            assert upstream.heads[0].startswith(b"CONNECT db.internal:5432 HTTP/1.1\r\n")
            assert b"host: db.internal:5432" in upstream.heads[0].lower()
    finally:
        upstream.close()


def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.mark.parametrize("answer_connect", [False, True], ids=["terminated", "passed-through"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_clients_half_close_ends_the_tunnel_after_every_byte(kind: str, answer_connect: bool,
                                                              tmp_path: Path) -> None:
    """Envoy 1.40: the upstream gets the client's bytes, then the connection ends (a FIN, or a
    reset when the proxy closes with the echo unread); the client is closed (an HTTP/1.1
    tunnel does not stay half-open)."""
    upstream = TunnelUpstream(answer_connect=answer_connect)
    port = free_port()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, terminate=not answer_connect), port, tmp_path):
            sock, _ = open_tunnel(port)
            with sock:
                sock.sendall(b"last words")
                sock.shutdown(socket.SHUT_WR)
                assert eventually(lambda: upstream.ended == [b"last words"]), upstream.ended
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(65536):   # the echo may or may not make it back first
                        pass
    finally:
        upstream.close()


def upgrade_counters(admin: int) -> tuple[int, int]:
    """http.main.downstream_cx_upgrades_total and _active, from the admin's /stats."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=3).read().decode()
    values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return (int(values.get("http.main.downstream_cx_upgrades_total", "0")),
            int(values.get("http.main.downstream_cx_upgrades_active", "0")))


@pytest.mark.parametrize("kind", KINDS)
def test_an_open_tunnel_counts_as_an_active_upgrade_until_it_closes(kind: str, tmp_path: Path) -> None:
    upstream = TunnelUpstream()
    port = free_port()
    text = bootstrap(port, upstream.port, terminate=True)
    admin = int(re.search(r"port_value: (\d+)", text).group(1))   # type: ignore[union-attr]
    try:
        with running_proxy(kind, text, port, tmp_path):
            sock, _ = open_tunnel(port)
            with sock:
                assert eventually(lambda: upgrade_counters(admin) == (1, 1)), upgrade_counters(admin)
            assert eventually(lambda: upgrade_counters(admin) == (1, 0)), upgrade_counters(admin)
    finally:
        upstream.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_connect_whose_upstream_refuses_still_counts_as_an_upgrade(kind: str, tmp_path: Path) -> None:
    closed = free_port()   # nothing listens there
    port = free_port()
    text = bootstrap(port, closed, terminate=True)
    admin = int(re.search(r"port_value: (\d+)", text).group(1))   # type: ignore[union-attr]
    with running_proxy(kind, text, port, tmp_path):
        sock, response = open_tunnel(port)
        sock.close()
        assert response.startswith(b"HTTP/1.1 503 ")
        assert eventually(lambda: upgrade_counters(admin) == (1, 0)), upgrade_counters(admin)


@pytest.mark.parametrize("kind", KINDS)
def test_a_tunnel_idle_for_the_routes_idle_timeout_is_closed(kind: str, tmp_path: Path) -> None:
    upstream = TunnelUpstream()
    port = free_port()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, terminate=True, idle="0.4s"), port, tmp_path):
            sock, _ = open_tunnel(port)
            with sock:
                for _ in range(3):   # traffic keeps it open past the timeout
                    time.sleep(0.2)
                    sock.sendall(b"x")
                    assert read_exactly(sock, 1) == b"x"
                quiet_since = time.monotonic()
                sock.settimeout(5)
                assert sock.recv(1) == b""
                # Envoy closes after its 1 s delayed-close on top of the timeout
                assert 0.35 < time.monotonic() - quiet_since < 2.5
    finally:
        upstream.close()


async def _addresses() -> DownstreamConnection:
    """What a Stream reads of its connection when it is made: its two addresses (a
    connection of a manager without routes, never made)."""
    manager = HttpConnectionManager(HcmConfig("connect", None), {}, random.Random(0), "10.0.0.2")
    connection = DownstreamConnection(manager)
    connection.peer = ("203.0.113.7", 40000)
    connection.local = ("10.0.0.2", 15001)
    return connection


def connect_stream(method: str, target: str, version: str, headers: Headers, keep_alive: bool,
            upgrade: bool) -> Stream:
    return Stream(asyncio.run(_addresses()), method, target, version, headers, keep_alive, upgrade)


@pytest.mark.parametrize("target", ["db.internal:5432", "10.0.0.1:443", "[fd00::1]:443"])
def test_a_connect_target_is_an_authority_with_a_port(target: str) -> None:
    request = connect_stream("CONNECT", target, "1.1", Headers([("host", "other")]), True, True)
    assert accept_request(request)
    assert request.headers.get("host") == target
    assert not request.keep_alive


@pytest.mark.parametrize("target", ["db.internal", "/", "http://db.internal:5432/", "db.internal:port"])
def test_a_connect_target_without_host_and_port_is_refused(target: str) -> None:
    assert not accept_request(connect_stream("CONNECT", target, "1.1", Headers([]), True, True))


def test_a_connect_with_a_body_is_refused() -> None:
    request = connect_stream("CONNECT", "db.internal:5432", "1.1", Headers([("content-length", "3")]), True, True)
    request.has_body = True
    assert not accept_request(request)


def route_table(route: str) -> RouteTable:
    from envoy.config.route.v3.route_pb2 import RouteConfiguration

    return RouteTable.from_proto(message(RouteConfiguration, f"""
name: local
virtual_hosts: [{{name: all, domains: ['*'], routes: [{route}]}}]
"""), "route_config")


def test_connect_matcher_matches_only_connect_requests() -> None:
    table = route_table("{match: {connect_matcher: {}}, route: {cluster: tunnel}}")
    assert table.select("CONNECT", "db.internal:5432", "db.internal:5432", Headers([])) is not None
    assert table.select("GET", "db.internal:5432", "/", Headers([])) is None


def test_path_routes_never_match_a_connect() -> None:
    table = route_table("{match: {prefix: ''}, route: {cluster: web}}")
    assert table.select("CONNECT", "db.internal:5432", "db.internal:5432", Headers([])) is None


def test_connect_config_belongs_to_connect_upgrades_only() -> None:
    with pytest.raises(ConfigError, match=r"upgrade_configs\[0\]\.connect_config"):
        route_table("{match: {prefix: /}, route: {cluster: web, upgrade_configs: "
                    "[{upgrade_type: websocket, connect_config: {}}]}}")


def test_connect_config_options_are_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match=r"connect_config\.allow_post"):
        route_table("{match: {connect_matcher: {}}, route: {cluster: web, upgrade_configs: "
                    "[{upgrade_type: CONNECT, connect_config: {allow_post: true}}]}}")

