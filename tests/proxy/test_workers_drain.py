"""--concurrency 2 and the server's health-check state (admin /healthcheck/fail, /healthcheck/ok):
the state is the server's, not one worker's, so while it is failed every worker's DEFAULT
listener drains (each response closes its connection) and /ready says DRAINING; after
/healthcheck/ok every worker keeps connections open again — as the real Envoy does with
--concurrency 2 on the same bootstrap and traffic."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from tests.ports import free_port
from tests.proxy.running import bootstrap
from tests.proxy.test_workers_health import ProbedUpstream
from tests.proxy_process import ProxyProcess

REQUESTS = 30   # each on a new downstream connection: SO_REUSEPORT spreads them over the workers


def keep_alive_request(port: int) -> bytes:
    """One keep-alive request on a new connection; its response's head (lower case)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
        return response.partition(b"\r\n\r\n")[0].lower()


def post(proxy: ProxyProcess, path: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"http://{proxy.admin}{path}", method="POST"), timeout=5).close()
    time.sleep(0.1)   # tulle-proxy: the leader's frame reaches the followers (a loop turn of each)


def ready(proxy: ProxyProcess) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{proxy.admin}/ready", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Phase:
    statuses: set[bytes]
    closing: int           # responses carrying connection: close
    workers_serving: int   # distinct upstream connections that carried these requests
    ready: tuple[int, bytes]


def phase(proxy: ProxyProcess, port: int, upstream: ProbedUpstream) -> Phase:
    upstream.request_connections.clear()
    heads = [keep_alive_request(port) for _ in range(REQUESTS)]
    return Phase(statuses={head.split(b" ", 2)[1] for head in heads},
                 closing=sum(b"\r\nconnection: close" in head for head in heads),
                 workers_serving=len(upstream.request_connections), ready=ready(proxy))


def observe(kind: Literal["envoy", "tulle-proxy"]) -> dict[str, Phase]:
    upstream = ProbedUpstream()
    port = free_port()
    proxy = ProxyProcess(kind, yaml.safe_load(bootstrap(port, upstream.port)), prefix=f"workerdrain-{kind}-",
                         until_live=True, concurrency=2)
    try:
        phases = {"before": phase(proxy, port, upstream)}
        post(proxy, "/healthcheck/fail")
        phases["failed"] = phase(proxy, port, upstream)
        post(proxy, "/healthcheck/ok")
        phases["ok"] = phase(proxy, port, upstream)
        return phases
    finally:
        proxy.close()
        upstream.close()


@pytest.fixture(scope="module")
def tulle() -> Iterator[dict[str, Phase]]:
    yield observe("tulle-proxy")


@pytest.fixture(scope="module")
def envoy() -> Iterator[dict[str, Phase]]:
    yield observe("envoy")


def test_healthcheck_fail_drains_every_worker(tulle: dict[str, Phase]) -> None:
    failed = tulle["failed"]
    assert failed.statuses == {b"200"}
    assert failed.workers_serving == 2     # both workers answered...
    assert failed.closing == REQUESTS      # ...and each closed every connection
    assert failed.ready == (503, b"DRAINING\n")


def test_healthcheck_ok_stops_every_workers_drain(tulle: dict[str, Phase]) -> None:
    ok = tulle["ok"]
    assert ok.statuses == {b"200"}
    assert ok.workers_serving == 2
    assert ok.closing == 0
    assert ok.ready == (200, b"LIVE\n")


def test_server_health_under_concurrency_is_what_envoy_shows(tulle: dict[str, Phase],
                                                             envoy: dict[str, Phase]) -> None:
    assert tulle == envoy
