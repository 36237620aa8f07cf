"""Upgrade (WebSocket) passthrough: with upgrade_configs the 101 and every byte after it pass
through both ways; without (or disabled on the route) Envoy answers 403. Checked against
Envoy with the same bootstrap."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.running import free_port, running_proxy


class EchoAfterUpgrade:
    """Answers an upgrade request with 101, then echoes every byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            self.requests.append(head)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                         b"connection: upgrade\r\n\r\n")
            if rest:
                conn.sendall(rest)
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                conn.sendall(chunk)


def config(port: int, admin: int, upstream: int) -> str:
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          upgrade_configs: [{{upgrade_type: websocket}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ['*']
              routes:
              - match: {{prefix: /denied}}
                route: {{cluster: ws, upgrade_configs: [{{upgrade_type: websocket, enabled: false}}]}}
              - {{match: {{prefix: /}}, route: {{cluster: ws}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: ws
    connect_timeout: 1s
    load_assignment:
      cluster_name: ws
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""


@pytest.fixture(scope="module", params=["tulle", "envoy"])
def listener(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    upstream = EchoAfterUpgrade()
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp(f"ws-{request.param}")
    try:
        with running_proxy(request.param, config(port, free_port(), upstream.port), port, workdir):
            yield port
    finally:
        upstream.sock.close()


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


def test_upgrade_switches_protocols_and_bytes_flow_both_ways(listener: int) -> None:
    sock, data = upgrade(listener, "/chat", early=b"early bytes|")
    with sock:
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        assert read_exactly(sock, len(b"early bytes|"), rest) == b"early bytes|"
        for message in (b"frame one", b"x" * 100_000):
            sock.sendall(message)
            assert read_exactly(sock, len(message)) == message


def test_upgrade_disabled_on_the_route_is_forbidden(listener: int) -> None:
    sock, data = upgrade(listener, "/denied")
    with sock:
        assert data.startswith(b"HTTP/1.1 403 ")
