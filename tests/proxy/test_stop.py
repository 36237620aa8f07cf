"""tulle-proxy stopped with requests in flight exits without error reports: a stop is not an
error."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tests.proxy.running import free_port, running_proxy


def bootstrap(listener: int, upstream: int) -> str:
    """One route to a cluster of one connection at most, so a second request waits for it."""
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {free_port()}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - {{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: a}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: a
    connect_timeout: 1s
    circuit_breakers: {{thresholds: [{{max_connections: 1}}]}}
    load_assignment:
      cluster_name: a
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""


@contextlib.contextmanager
def silent_upstream() -> Iterator[int]:
    """A port whose connections are accepted (by the kernel) and never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def test_a_stop_with_requests_in_flight_reports_no_error(tmp_path: Path) -> None:
    listener = free_port()
    with silent_upstream() as upstream:
        clients: list[socket.socket] = []
        try:
            with running_proxy("tulle", bootstrap(listener, upstream), listener, tmp_path):
                for index in range(2):   # one waits for its response, one for a connection
                    client = socket.create_connection(("127.0.0.1", listener), timeout=2)
                    client.sendall(f"GET /{index} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
                    clients.append(client)
                time.sleep(0.5)
        finally:
            for client in clients:
                client.close()
    log = (tmp_path / "tulle.log").read_text()
    assert "Traceback" not in log and "Error" not in log, log
