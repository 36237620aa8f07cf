"""Slowloris guards against the real Envoy: a client that sends a request's head or body too
slowly gets 408 and the connection closes; the counters say which timeout fired."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.proxy.running import (
    RecordingUpstream,
    bootstrap,
    free_port,
    running_proxy,
    silent_upstream,
)

TIMEOUTS = "          request_headers_timeout: 0.4s\n          request_timeout: 0.9s"


def _stall(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data` and nothing more; the proxy's answer and when it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=4) as sock:
        start = time.monotonic()
        sock.sendall(data)
        response = b""
        while b"\r\n\r\n" not in response or not response.endswith((b"timeout",)):
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
        return response, time.monotonic() - start


def _counter(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f"http.main.{name}:"):
                return int(line.split(":")[1])
    raise AssertionError(f"no stat http.main.{name}")


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_head_that_never_ends_gets_408_request_header_timeout(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with (silent_upstream() as upstream,
          running_proxy(kind, bootstrap(port, upstream, TIMEOUTS, admin_port=admin), port, tmp_path)):
        response, elapsed = _stall(port, b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: 1\r\n")
        assert _counter(admin, "downstream_rq_header_timeout") == 1
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in head.lower()
    assert body == b"request header timeout"
    assert 0.35 < elapsed < 0.85


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_body_that_never_ends_gets_408_request_timeout(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with (silent_upstream() as upstream,
          running_proxy(kind, bootstrap(port, upstream, TIMEOUTS, admin_port=admin), port, tmp_path)):
        response, elapsed = _stall(port, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        assert _counter(admin, "downstream_rq_timeout") == 1
        assert _counter(admin, "downstream_rq_header_timeout") == 0
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in head.lower()
    assert body == b"request timeout"
    assert 0.85 < elapsed < 1.4


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_request_received_whole_is_not_cut_by_the_request_timeout(kind: str, tmp_path: Path) -> None:
    port = free_port()
    with (silent_upstream() as upstream,
          running_proxy(kind, bootstrap(port, upstream, TIMEOUTS, route_extra=", timeout: 1.5s"), port, tmp_path)):
        response, elapsed = _stall(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 504 ")   # the route timeout, not the request timeout
    assert elapsed > 1.4


def _eof_after_one_request(port: int) -> float:
    """Seconds from a keep-alive request's response until the proxy closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=6) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        response = sock.recv(4096)
        assert response.startswith(b"HTTP/1.1 200"), response
        start = time.monotonic()
        while sock.recv(4096):
            pass
        return time.monotonic() - start


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_an_idle_connection_closes_a_drain_timeout_after_its_idle_timeout(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    upstream = RecordingUpstream()
    extra = ("          common_http_protocol_options: {idle_timeout: 0.3s}\n          drain_timeout: 0.8s\n"
             "          delayed_close_timeout: 0s")
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, extra, admin_port=admin), port, tmp_path):
            elapsed = _eof_after_one_request(port)
            assert _counter(admin, "downstream_cx_idle_timeout") == 1
    finally:
        upstream.close()
    assert 1.05 < elapsed < 1.5


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_stalled_body_gets_408_stream_timeout_from_the_stream_idle_timeout(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with (silent_upstream() as upstream,
          running_proxy(kind, bootstrap(port, upstream, "          stream_idle_timeout: 0.5s", admin_port=admin),
                        port, tmp_path)):
        response, elapsed = _stall(port, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        assert _counter(admin, "downstream_rq_idle_timeout") == 1
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert body == b"stream timeout"
    assert 0.45 < elapsed < 1.0


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
@pytest.mark.parametrize("option", ["idle_timeout", "max_connection_duration"])
def test_a_connection_that_never_sent_a_byte_closes_without_a_drain(kind: str, option: str,
                                                                     tmp_path: Path) -> None:
    port = free_port()
    extra = f"          common_http_protocol_options: {{{option}: 0.4s}}\n          drain_timeout: 2s"
    with (silent_upstream() as upstream,
          running_proxy(kind, bootstrap(port, upstream, extra), port, tmp_path),
          socket.create_connection(("127.0.0.1", port), timeout=4) as sock):
        start = time.monotonic()
        assert sock.recv(4096) == b""
        elapsed = time.monotonic() - start
    assert 0.35 < elapsed < 1.2
