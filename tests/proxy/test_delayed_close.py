"""delayed_close_timeout against the real Envoy: a connection the proxy closes after an error
reply stays open (input read and dropped) until the client closes or the timeout passes (1 s
unless set); a client that asked for `connection: close` is not kept waiting."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.proxy.running import RecordingUpstream, bootstrap, free_port, running_proxy
from tests.proxy.test_request_timeouts import _counter

DELAYED = "          delayed_close_timeout: 0.6s"


def _reply_then_eof(port: int, request: bytes) -> tuple[bytes, float]:
    """The reply, and the seconds from its arrival to the proxy's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=4) as sock:
        sock.sendall(request)
        reply = sock.recv(4096)
        start = time.monotonic()
        while sock.recv(4096):
            pass
        return reply, time.monotonic() - start


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_after_a_protocol_error_the_proxy_waits_for_the_clients_close(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    upstream = RecordingUpstream()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, DELAYED, admin_port=admin), port, tmp_path):
            reply, waited = _reply_then_eof(port, b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n")
            assert _counter(admin, "downstream_cx_delayed_close_timeout") == 1
    finally:
        upstream.close()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert 0.5 < waited < 1.0


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_client_asking_for_close_is_closed_at_once(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    upstream = RecordingUpstream()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, DELAYED, admin_port=admin), port, tmp_path):
            reply, waited = _reply_then_eof(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert _counter(admin, "downstream_cx_delayed_close_timeout") == 0
    finally:
        upstream.close()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert waited < 0.3


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_unset_the_proxy_waits_a_second_for_the_clients_close(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    upstream = RecordingUpstream()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, admin_port=admin), port, tmp_path):
            reply, waited = _reply_then_eof(port, b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n")
            assert _counter(admin, "downstream_cx_delayed_close_timeout") == 1
    finally:
        upstream.close()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert 0.9 < waited < 1.4


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_set_to_zero_the_proxy_closes_at_once(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    upstream = RecordingUpstream()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, "          delayed_close_timeout: 0s",
                                           admin_port=admin), port, tmp_path):
            reply, waited = _reply_then_eof(port, b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n")
            assert _counter(admin, "downstream_cx_delayed_close_timeout") == 0
    finally:
        upstream.close()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert waited < 0.3
