"""A cluster's upstream HTTP options (`typed_extension_protocol_options` HttpProtocolOptions,
as Istio's DestinationRule connection pool sets them) against the real Envoy: requests per
upstream connection, the response headers' size limit and the upstream stream duration."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.bootstrap import parse_bootstrap
from proxy.config_error import ConfigError
from tests.proxy.running import (
    RecordingUpstream,
    ThreadedUpstream,
    cluster,
    exchange,
    free_port,
    hcm_bootstrap,
    running_proxy,
)
from tests.proxy.test_bootstrap import bootstrap as config_bootstrap

ROUTE = "              - {match: {prefix: /}, route: {cluster: a}}"


def http_options(common: str) -> str:
    """The cluster lines of an HttpProtocolOptions with `common` as its common options."""
    return ("    typed_extension_protocol_options:\n"
            "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
            "        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
            "        explicit_http_config: {http_protocol_options: {}}\n"
            f"        common_http_protocol_options: {common}")


def _inline_options(common: str) -> str:
    """http_options on one line (for tests.proxy.test_bootstrap's cluster)."""
    return ("typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"
            "'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, "
            f"explicit_http_config: {{http_protocol_options: {{}}}}, common_http_protocol_options: {common}}}}}")


def _counter(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter={name}", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split(":")[1])
    raise AssertionError(f"no stat {name}")


def _statuses(port: int, count: int) -> list[bytes]:
    """`count` requests on one keep-alive downstream connection (each answered "ok" by the
    RecordingUpstream), their status codes."""
    statuses = []
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        for _ in range(count):
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            reply = b""
            while not reply.endswith(b"\r\n\r\nok"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            statuses.append(reply.split(b" ", 2)[1])
    return statuses


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_an_upstream_connection_carries_max_requests_per_connection_then_closes(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    upstream = RecordingUpstream()
    config = hcm_bootstrap(port, ROUTE, cluster("a", upstream.port, extra=http_options("{max_requests_per_connection: 2}")),
                           admin_port=admin)
    try:
        with running_proxy(kind, config, port, tmp_path):
            statuses = _statuses(port, 5)
            connections = _counter(admin, "cluster.a.upstream_cx_total")
    finally:
        upstream.close()
    assert statuses == [b"200"] * 5
    assert connections == 3


class BigHeaderUpstream(ThreadedUpstream):
    """An upstream answering every request with one `x-big` header of `size` bytes."""

    def __init__(self, size: int) -> None:
        self.reply = b"HTTP/1.1 200 OK\r\nx-big: " + b"b" * size + b"\r\ncontent-length: 2\r\n\r\nok"
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        if conn.recv(65536):
            conn.sendall(self.reply)
            conn.recv(65536)


@pytest.fixture
def big_header_upstreams() -> Iterator[tuple[int, int]]:
    """Upstreams whose response headers are under and over 2 KiB."""
    under, over = BigHeaderUpstream(1900), BigHeaderUpstream(2100)
    yield under.port, over.port
    under.close()
    over.close()


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_response_headers_over_max_response_headers_kb_are_a_502(
        kind: str, big_header_upstreams: tuple[int, int], tmp_path: Path) -> None:
    port = free_port()
    under, over = big_header_upstreams
    routes = ("              - {match: {prefix: /over}, route: {cluster: over}}\n"
              "              - {match: {prefix: /}, route: {cluster: under}}")
    limit = http_options("{max_response_headers_kb: 2}")
    clusters = cluster("under", under, extra=limit) + "\n" + cluster("over", over, extra=limit)
    with running_proxy(kind, hcm_bootstrap(port, routes, clusters), port, tmp_path):
        under_reply, over_reply = (exchange(port, f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
                                   for path in ("/", "/over"))
    assert under_reply.startswith(b"HTTP/1.1 200 ")
    assert over_reply.startswith(b"HTTP/1.1 502 ")
    assert over_reply.endswith(b"reset reason: protocol error")


@pytest.mark.parametrize(("common", "field"), [
    ("{max_response_headers_kb: 0}", "max_response_headers_kb"),
    ("{max_stream_duration: -1s}", "max_stream_duration"),
    ("{idle_timeout: 5s}", "idle_timeout"),
])
def test_a_bad_or_unsupported_common_option_is_refused_naming_the_field(common: str, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_bootstrap(config_bootstrap(cluster_extra=_inline_options(common)))
    assert error.value.path == ("static_resources.clusters[0].typed_extension_protocol_options"
                                f"[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].common_http_protocol_options.{field}")


def test_max_requests_per_connection_set_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        parse_bootstrap(config_bootstrap(cluster_extra=(
            "max_requests_per_connection: 3\n      " + _inline_options("{max_requests_per_connection: 2}"))))
    assert error.value.path == ("static_resources.clusters[0].typed_extension_protocol_options"
                                "[envoy.extensions.upstreams.http.v3.HttpProtocolOptions]"
                                ".common_http_protocol_options.max_requests_per_connection")


class SecondRequestHangs(ThreadedUpstream):
    """An upstream answering each connection's first request, never its second."""

    timeout = 3.0

    def serve(self, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        conn.recv(65536)
        conn.recv(65536)   # (until the proxy gives up on it)


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_an_upstream_request_past_max_stream_duration_gets_504(kind: str, tmp_path: Path) -> None:
    """The second request goes over the connection the first left idle, and is never answered."""
    port, admin = free_port(), free_port()
    upstream = SecondRequestHangs()
    config = hcm_bootstrap(port, ROUTE, cluster("a", upstream.port, extra=http_options("{max_stream_duration: 0.4s}")),
                           admin_port=admin)
    try:
        with running_proxy(kind, config, port, tmp_path):
            first = exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            start = time.monotonic()
            second = exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            elapsed = time.monotonic() - start
            reached = _counter(admin, "cluster.a.upstream_rq_max_duration_reached")
    finally:
        upstream.close()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert second.startswith(b"HTTP/1.1 504 ")
    assert second.endswith(b"\r\n\r\nupstream max stream duration reached")
    assert reached == 1
    assert 0.3 < elapsed < 0.8
