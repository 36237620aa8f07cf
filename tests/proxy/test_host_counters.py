"""Per-host counters on admin /clusters, against the real Envoy: a request that times out
is one of the host's requests, an error and a timeout."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.admin.clusters_text import parse_clusters
from tests.proxy.running import exchange, free_port, running_proxy


def bootstrap(port: int, admin: int, upstream: int) -> str:
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
          route_config:
            virtual_hosts:
            - {{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: a, timeout: 0.3s}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: a
    connect_timeout: 1s
    load_assignment:
      cluster_name: a
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    """Accepts connections (in the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_timed_out_request_is_a_host_request_error_and_timeout(kind: str, silent_upstream: int,
                                                                   tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with running_proxy(kind, bootstrap(port, admin, silent_upstream), port, tmp_path):
        response = exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 504 ")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=5) as page:
            [host] = parse_clusters(page.read().decode())["a"].hosts.values()
    assert (host["rq_total"], host["rq_error"], host["rq_timeout"], host["rq_success"]) == ("1", "1", "1", "0")
