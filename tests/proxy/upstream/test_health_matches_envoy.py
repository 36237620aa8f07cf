"""Our HTTP health-check request is byte for byte the one the real Envoy sends."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml
from envoy.config.core.v3.health_check_pb2 import HealthCheck
from google.protobuf import json_format

from proxy.upstream.health import HealthCheckConfig, HttpCheck
from proxy.upstream.health.prober import HealthChecker
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.running import ThreadedUpstream, read_head
from tests.proxy.upstream.envoy_peer import envoy, free_port


class HeadRecorder(ThreadedUpstream):
    """Records each request head and answers 200, one request per connection."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        request = read_head(conn)
        self.heads.append(request[0] + b"\r\n\r\n" if request is not None else b"")
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


@contextmanager
def recording_server() -> Iterator[tuple[int, list[bytes]]]:
    server = HeadRecorder()
    try:
        yield server.port, server.heads
    finally:
        server.close()


def envoy_bootstrap(port: int, listener: int, admin: int, http_check: str, reuse: bool) -> str:
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    health_checks:
    - timeout: 1s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 2
      healthy_threshold: 1
      reuse_connection: {str(reuse).lower()}
      http_health_check: {http_check}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


def envoy_head(http_check: str, reuse: bool) -> bytes:
    listener, admin = free_port(), free_port()
    with recording_server() as (port, heads):
        with envoy(envoy_bootstrap(port, listener, admin, http_check, reuse), listener):
            deadline = time.monotonic() + 5
            while not heads and time.monotonic() < deadline:
                time.sleep(0.02)
        assert heads, "envoy sent no health check"
        return heads[0]


def our_head(check: HttpCheck, reuse: bool) -> bytes:
    async def main(port: int, heads: list[bytes]) -> None:
        config = HealthCheckConfig(
            timeout=1.0, interval=0.1, unhealthy_threshold=2, healthy_threshold=1,
            check=check, reuse_connection=reuse,
        )
        checker = HealthChecker(config, HostSet([Host("127.0.0.1", port)]), random.Random(0), "backend")
        checker.start()
        await asyncio.wait_for(checker.initialized.wait(), 5)
        await checker.stop()

    with recording_server() as (port, heads):
        asyncio.run(main(port, heads))
        return heads[0]


# The same http_health_check YAML configures Envoy and (through from_proto) our checker.
CASES = {
    "cluster-name": ("{path: /healthz}", True),
    "configured-host": ("{path: /healthz, host: svc.example}", True),
    "no-reuse": ("{path: /healthz}", False),
    "head-with-headers": (
        "{path: /hz, method: HEAD, request_headers_to_add: [{header: {key: x-a, value: '1'}},"
        " {header: {key: x-b, value: '2'}}], request_headers_to_remove: [user-agent]}",
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_http_health_check_request_matches_envoy(case: str) -> None:
    http_check, reuse = CASES[case]
    message = json_format.ParseDict(yaml.safe_load(http_check), HealthCheck.HttpHealthCheck())
    ours = HttpCheck.from_proto(message, "http_health_check")
    assert our_head(ours, reuse) == envoy_head(http_check, reuse)
