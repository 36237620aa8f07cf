"""Upgrade (WebSocket) passthrough: with upgrade_configs the 101 and every byte after it pass
through both ways; without (or disabled on the route) Envoy answers 403. Checked against
Envoy with the same bootstrap."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.proxy.running import (
    ThreadedUpstream,
    cluster,
    echo_until_end,
    free_port,
    hcm_bootstrap,
    read_head,
    running_proxy,
)


class EchoAfterUpgrade(ThreadedUpstream):
    """Answers an upgrade request with 101, then echoes every byte."""

    timeout = 10.0

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.ended: list[bytes] = []   # per upgraded connection that saw the FIN: what came before it
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        if (request := read_head(conn)) is None:
            return
        head, rest = request
        self.requests.append(head)
        if b"/declined" in head:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                     b"connection: upgrade\r\n\r\n")
        self.ended.append(echo_until_end(conn, rest))


def config(port: int, admin: int, upstream: int) -> str:
    return hcm_bootstrap(port, """              - match: {prefix: /denied}
                route: {cluster: ws, upgrade_configs: [{upgrade_type: websocket, enabled: false}]}
              - {match: {prefix: /}, route: {cluster: ws}}""", cluster("ws", upstream),
                         "          upgrade_configs: [{upgrade_type: websocket}]", admin_port=admin)


@dataclass
class Listener:
    port: int
    admin: int
    upstream: EchoAfterUpgrade

    def upgrades(self) -> tuple[int, int]:
        """http.main.downstream_cx_upgrades_total and _active, from the admin's /stats."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats", timeout=3).read().decode()
        values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        return (int(values.get("http.main.downstream_cx_upgrades_total", "0")),
                int(values.get("http.main.downstream_cx_upgrades_active", "0")))


@pytest.fixture(params=["tulle", "envoy"])
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    upstream = EchoAfterUpgrade()
    port, admin = free_port(), free_port()
    try:
        with running_proxy(request.param, config(port, admin, upstream.port), port, tmp_path):
            yield Listener(port, admin, upstream)
    finally:
        upstream.close()


def upgrade(port: int, path: str, early: bytes = b"") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\n"
                 f"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
                 f"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode() + early)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return sock, data


def read_exactly(sock: socket.socket, size: int, already: bytes = b"") -> bytes:
    data = already
    while len(data) < size:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_upgrade_switches_protocols_and_bytes_flow_both_ways(proxied: Listener) -> None:
    sock, data = upgrade(proxied.port, "/chat", early=b"early bytes|")
    with sock:
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        assert read_exactly(sock, len(b"early bytes|"), rest) == b"early bytes|"
        for message in (b"frame one", b"x" * 100_000):
            sock.sendall(message)
            assert read_exactly(sock, len(message)) == message


def test_upgrade_disabled_on_the_route_is_forbidden(proxied: Listener) -> None:
    sock, data = upgrade(proxied.port, "/denied")
    with sock:
        assert data.startswith(b"HTTP/1.1 403 ")


def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_clients_half_close_ends_the_upgraded_connection_after_every_byte(proxied: Listener) -> None:
    """Envoy 1.40: the upstream gets the client's bytes, then the connection ends (a FIN, or a
    reset when the proxy closes with the echo unread); the client is closed."""
    sock, _ = upgrade(proxied.port, "/chat")
    with sock:
        sock.sendall(b"last frame")
        sock.shutdown(socket.SHUT_WR)
        assert eventually(lambda: proxied.upstream.ended == [b"last frame"]), proxied.upstream.ended
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):   # the echo may or may not make it back first
                pass


def test_an_upgraded_connection_counts_as_an_active_upgrade_until_it_closes(proxied: Listener) -> None:
    sock, data = upgrade(proxied.port, "/chat")
    with sock:
        assert data.startswith(b"HTTP/1.1 101 ")
        assert eventually(lambda: proxied.upgrades() == (1, 1)), proxied.upgrades()
    assert eventually(lambda: proxied.upgrades() == (1, 0)), proxied.upgrades()


def test_an_upgrade_the_upstream_declines_still_counts_as_an_upgrade(proxied: Listener) -> None:
    sock, data = upgrade(proxied.port, "/declined")
    sock.close()
    assert data.startswith(b"HTTP/1.1 404 ")
    assert eventually(lambda: proxied.upgrades() == (1, 0)), proxied.upgrades()


def test_an_upgrade_the_route_forbids_is_not_counted(proxied: Listener) -> None:
    sock, data = upgrade(proxied.port, "/denied")
    sock.close()
    assert data.startswith(b"HTTP/1.1 403 ")
    assert proxied.upgrades() == (0, 0)
