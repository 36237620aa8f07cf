"""An upstream that answers garbage, closes mid-response or is slow to start: the client gets
what Envoy gives it (same bootstrap, compared case by case), and a slowloris client does
not hold up anyone else."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.running import (
    ThreadedUpstream,
    bootstrap,
    exchange,
    free_port,
    read_head,
    running_proxy,
)

ANSWERS = {
    "/garbage": b"this is not http\r\n\r\n",
    "/bad-status": b"HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n",
    "/half-head": b"HTTP/1.1 200 OK\r\ncontent-le",   # then closes inside the head
    "/short-body": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    # It closes after answering, so it says so (RFC 9112 9.6): without `connection: close`
    # a proxy may reuse the connection before the close reaches it, and get a reset.
    "/ok": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    # it keeps this connection open for the next request: the proxy pools it
    "/keep": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
}


BROKEN = ["/garbage", "/bad-status", "/half-head", "/short-body", "/bad-chunk"]
# each request's path, status, response flags, response code details and body bytes sent
LOG_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_SENT%\\n"


def access_logged(path: Path) -> str:
    return f"""          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
              log_format: {{text_format_source: {{inline_string: "{LOG_FORMAT}"}}}}"""


class ScriptedUpstream(ThreadedUpstream):
    """Answers each request with the raw bytes for its path, then closes (after /keep, it
    reads the next request)."""

    def serve(self, conn: socket.socket) -> None:
        following = b""
        while (request := read_head(conn, following)) is not None:
            head, following = request
            path = head.split(b" ")[1].decode()
            conn.sendall(ANSWERS.get(path, ANSWERS["/ok"]))
            if path != "/keep":
                return


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    upstream = ScriptedUpstream()
    ports = {"tulle": free_port(), "envoy": free_port()}
    workdir: Path = tmp_path_factory.mktemp("bad-upstream")
    with running_proxy("tulle", bootstrap(ports["tulle"], upstream.port), ports["tulle"], workdir), \
            running_proxy("envoy", bootstrap(ports["envoy"], upstream.port), ports["envoy"], workdir):
        yield ports
    upstream.close()


def status_and_body(response: bytes) -> tuple[bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


@pytest.mark.parametrize("path", BROKEN)
def test_broken_upstream_answer_gets_envoys_response(both: dict[str, int], path: str) -> None:
    request = f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
    envoy = status_and_body(exchange(both["envoy"], request))
    tulle = status_and_body(exchange(both["tulle"], request))
    assert tulle == envoy


@pytest.mark.parametrize("path", BROKEN)
def test_broken_answer_on_a_pooled_upstream_connection_gets_envoys_response(both: dict[str, int], path: str) -> None:
    # (the proxy's first attempt on an idle pooled connection: Tulle's callback path)
    answers = {}
    for kind in ("tulle", "envoy"):
        assert exchange(both[kind], b"GET /keep HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200 ")
        answers[kind] = status_and_body(exchange(
            both[kind], f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()))
    assert answers["tulle"] == answers["envoy"]


def test_broken_upstream_answer_is_logged_with_envoys_flags_and_details(tmp_path: Path) -> None:
    upstream = ScriptedUpstream()
    logged: dict[str, list[str]] = {}
    try:
        for kind in ("tulle", "envoy"):
            port, log = free_port(), tmp_path / f"{kind}-access.log"
            with running_proxy(kind, bootstrap(port, upstream.port, access_logged(log)), port, tmp_path):
                # each broken answer on a new upstream connection, then on a pooled one
                for path in (*BROKEN, *(step for broken in BROKEN for step in ("/keep", broken))):
                    exchange(port, f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            logged[kind] = log.read_text().splitlines()   # (flushed as the proxy stopped)
    finally:
        upstream.close()
    assert logged["tulle"] == logged["envoy"]
    assert len(logged["tulle"]) == 3 * len(BROKEN)


def test_slowloris_client_does_not_delay_others(both: dict[str, int]) -> None:
    port = both["tulle"]
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        slow.sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\n")   # and never finishes its headers
        for _ in range(20):
            slow.sendall(b"x-drip: 1\r\n")
            response = exchange(port, b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 200 ")
    finally:
        slow.close()
