"""Health transitions, counted in checks, are Envoy's: an unexpected status fails a
healthy host at once, a retriable one after unhealthy_threshold checks, and a failed
host needs healthy_threshold passing checks to return."""

from __future__ import annotations

import asyncio
import http.client
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml
from envoy.config.core.v3.health_check_pb2 import HealthCheck
from google.protobuf import json_format

from proxy.upstream.health import HealthCheckConfig, HealthChecker
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.envoy_peer import envoy, free_port

HEALTH_CHECK = {
    "timeout": "1s",
    "interval": "0.15s",
    "no_traffic_interval": "0.15s",
    "unhealthy_threshold": 3,
    "healthy_threshold": 2,
    "http_health_check": {"path": "/healthz", "retriable_statuses": [{"start": 500, "end": 501}]},
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        server.checks += 1  # type: ignore[attr-defined]
        status = server.status  # type: ignore[attr-defined]
        self.wfile.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.status = 200  # type: ignore[attr-defined]
    server.checks = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def checks_until(server: ThreadingHTTPServer, status: int, failed: Callable[[], bool], want_failed: bool) -> int:
    """Switch the server to `status` right after a check, and count the checks it
    takes until the host's failed flag becomes `want_failed`."""
    seen = server.checks  # type: ignore[attr-defined]
    wait_for(lambda: server.checks > seen)  # type: ignore[attr-defined]
    server.status = status  # type: ignore[attr-defined]
    start = server.checks  # type: ignore[attr-defined]
    wait_for(lambda: failed() == want_failed)
    return int(server.checks - start)  # type: ignore[attr-defined]


def scenario(server: ThreadingHTTPServer, failed: Callable[[], bool]) -> list[int]:
    wait_for(lambda: not failed())  # first check passes: healthy at once
    counts = [checks_until(server, 503, failed, True)]
    counts.append(checks_until(server, 200, failed, False))
    counts.append(checks_until(server, 500, failed, True))
    return counts


def envoy_counts() -> list[int]:
    listener, admin = free_port(), free_port()
    with health_server() as server:
        config = yaml.safe_dump({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "t", "cluster": "hc",
                        },
                    }]}],
                }],
                "clusters": [{
                    "name": "hc", "type": "STATIC", "connect_timeout": "1s",
                    "health_checks": [HEALTH_CHECK],
                    "load_assignment": {"cluster_name": "hc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": server.server_port}}
                    }}]}]},
                }],
            },
        })
        with envoy(config, listener):
            def failed() -> bool:
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
                conn.request("GET", "/clusters")
                text = conn.getresponse().read().decode()
                conn.close()
                flags = [line for line in text.splitlines() if "::health_flags::" in line]
                return bool(flags) and "failed_active_hc" in flags[0]

            return scenario(server, failed)


def our_counts() -> list[int]:
    message = json_format.ParseDict(HEALTH_CHECK, HealthCheck())
    config = HealthCheckConfig.from_proto(message)
    with health_server() as server:
        host = Host("127.0.0.1", server.server_port)
        loop = asyncio.new_event_loop()
        checker = HealthChecker(config, HostSet([host]), random.Random(0), "hc")
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(_start(checker), loop).result(5)
        try:
            return scenario(server, lambda: host.health_check_failed)
        finally:
            asyncio.run_coroutine_threadsafe(checker.stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


async def _start(checker: HealthChecker) -> None:
    checker.start()


def test_health_transitions_count_the_same_checks_as_envoy() -> None:
    ours = our_counts()
    assert ours == [1, 2, 3]  # 503 at once; back after 2 passes; retriable 500 after 3
    assert envoy_counts() == ours
