"""Malformed requests get Envoy's status and never reach the upstream.

Every case runs against tulle-proxy and against the real Envoy with the same bootstrap, so
the expected statuses are Envoy's own, checked on each run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.running import RecordingUpstream, bootstrap, exchange, free_port, running_proxy

CASES = {
    "bad request line": (b"GARBAGE\r\n\r\n", 400),
    "unknown http version": (b"GET / HTTP/9.9\r\nhost: x\r\n\r\n", 426),
    "http/1.0 without accept_http_10": (b"GET / HTTP/1.0\r\n\r\n", 426),
    "header bigger than max_request_headers_kb": (
        b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    "more headers than max_headers_count": (
        b"GET / HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(120)) + b"\r\n",
        431),
    "content-length with transfer-encoding": (
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n", 400),
    "invalid chunk size": (
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    "two different content-lengths": (
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!", 400),
    "space in a header name": (b"GET / HTTP/1.1\r\nhost: x\r\nbad header: v\r\n\r\n", 400),
    "no host header": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "upgrade without upgrade_configs": (
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n", 403),
}


@pytest.fixture(scope="module", params=["tulle", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[int, RecordingUpstream]]:
    upstream = RecordingUpstream()
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    try:
        with running_proxy(request.param, bootstrap(port, upstream.port), port, workdir):
            yield port, upstream
    finally:
        upstream.close()


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_gets_envoys_status_and_never_reaches_upstream(
        proxy: tuple[int, RecordingUpstream], case: str) -> None:
    port, upstream = proxy
    data, status = CASES[case]
    before = len(upstream.received)
    response = exchange(port, data)
    assert response.startswith(b"HTTP/1.1 %d " % status), response[:200]
    assert b"connection: close" in response.lower()
    assert len(upstream.received) == before


def test_a_well_formed_request_after_the_bad_ones_is_proxied(
        proxy: tuple[int, RecordingUpstream]) -> None:
    port, upstream = proxy
    response = exchange(port, b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert response.endswith(b"ok")
    assert any(request.startswith(b"GET /ok HTTP/1.1") for request in upstream.received)


def test_a_long_pipeline_is_answered_in_order(proxy: tuple[int, RecordingUpstream]) -> None:
    port, _ = proxy
    requests = b"".join(b"GET /p%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(300))
    requests += b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    response = exchange(port, requests, timeout=10)
    assert response.count(b"HTTP/1.1 200 ") == 301
