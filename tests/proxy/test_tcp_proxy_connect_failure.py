"""tcp_proxy when the upstream refuses the connection, against the real Envoy: a client whose
bytes never got anywhere is reset, one that sent nothing sees a plain close (FIN).

Envoy reads nothing before its upstream is up, so what decides is whether the client's bytes
reached the proxy before it gave up: a tls_inspector makes sure of it (it waits for the
first bytes before the filter chain, hence the connect, starts)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.proxy.running import free_port, running_proxy


def tcp_proxy_bootstrap(port: int, upstream: int, listener_filters: str = "") -> str:
    return f"""
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
{listener_filters}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: up
  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""


def _end_seen(port: int, payload: bytes) -> str:
    """How the proxy ends a connection whose upstream refused: "RST" or "FIN"."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        if payload:
            sock.sendall(payload)
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            return "RST"
        assert data == b""
        return "FIN"


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_client_whose_bytes_had_nowhere_to_go_is_reset(kind: str, tmp_path: Path) -> None:
    port = free_port()
    inspector = ("    listener_filters: [{name: envoy.filters.listener.tls_inspector, typed_config: "
                 "{'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}]")
    with running_proxy(kind, tcp_proxy_bootstrap(port, free_port(), inspector), port, tmp_path):
        ends = [_end_seen(port, b"hello") for _ in range(3)]
    assert ends == ["RST"] * 3


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_client_that_sent_nothing_sees_a_plain_close(kind: str, tmp_path: Path) -> None:
    port = free_port()
    with running_proxy(kind, tcp_proxy_bootstrap(port, free_port()), port, tmp_path):
        ends = [_end_seen(port, b"") for _ in range(3)]
    assert ends == ["FIN"] * 3
