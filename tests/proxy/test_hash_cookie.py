"""Generated hash cookies (a cookie hash_policy with a ttl), checked on tulle-proxy and on the
real Envoy alike: the value is xxHash64 of the connection's remote then local address, and a
client that presents it back sticks to the upstream that served the request that set it."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import xxhash

from proxy.http.hash_cookie import cookie_value, set_cookie_line
from proxy.router.route import HashPolicy
from tests.proxy.running import RecordingUpstream, cluster, free_port, hcm_bootstrap, running_proxy


def test_the_value_is_xxhash64_of_the_remote_then_the_local_address() -> None:
    expected = f"{xxhash.xxh64_intdigest(b'10.0.0.9:5555[::1]:80'):016x}"
    assert cookie_value(("10.0.0.9", 5555), ("::1", 80)) == expected


def test_the_set_cookie_line_has_max_age_path_attributes_and_httponly() -> None:
    policy = HashPolicy("cookie", "session", ttl=3600, path="/app", attributes=(("Secure", ""), ("SameSite", "Lax")))
    assert set_cookie_line(policy, "00ff") == ('session="00ff"; Max-Age=3600; Path=/app; Secure; SameSite=Lax; '
                                               "HttpOnly")


def test_a_zero_ttl_makes_a_session_cookie() -> None:
    assert set_cookie_line(HashPolicy("cookie", "s", ttl=0), "ab") == 's="ab"; HttpOnly'


def config(port: int, upstreams: list[RecordingUpstream]) -> str:
    return hcm_bootstrap(port, """              - match: {prefix: /}
                route: {cluster: ring, hash_policy: [{cookie: {name: session, ttl: 60s, path: /}}]}""",
                         cluster("ring", *(u.port for u in upstreams), extra="    lb_policy: RING_HASH"))


def request(port: int, cookie: str | None) -> tuple[bytes, tuple[str, int]]:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        extra = f"cookie: {cookie}\r\n" if cookie else ""
        sock.sendall(f"GET /x HTTP/1.1\r\nhost: example.com\r\n{extra}connection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        return response, sock.getsockname()


def served_by(upstreams: list[RecordingUpstream], before: list[int]) -> int:
    [index] = [i for i, u in enumerate(upstreams) if len(u.received) > before[i]]
    return index


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["envoy", "tulle"])
def test_a_generated_cookie_is_derived_from_the_connection_and_sticks(kind: str, tmp_path: Path) -> None:
    upstreams = [RecordingUpstream() for _ in range(3)]
    port = free_port()
    try:
        with running_proxy(kind, config(port, upstreams), port, tmp_path):
            for _ in range(3):
                before = [len(u.received) for u in upstreams]
                response, client = request(port, None)
                first = served_by(upstreams, before)
                match = re.search(rb'\r\nset-cookie: session="([0-9a-f]{16})"; Max-Age=60; Path=/; HttpOnly\r\n',
                                  response)
                assert match is not None, response
                value = match.group(1).decode()
                assert value == cookie_value(client, ("127.0.0.1", port))
                for presented in (f'session="{value}"', f"session={value}"):
                    before = [len(u.received) for u in upstreams]
                    response, _ = request(port, presented)
                    assert b"set-cookie" not in response.lower()
                    assert served_by(upstreams, before) == first
    finally:
        for upstream in upstreams:
            upstream.close()
