"""--concurrency 2 with circuit breakers: a cluster's thresholds hold for the whole proxy, not
per worker. With max_requests 1, one request in flight anywhere makes every other worker
answer 503 with x-envoy-overloaded, and the circuit_breakers.* gauges are the proxy's (not a
sum over the workers) — as the real Envoy does with --concurrency 2 on the same bootstrap and
traffic."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from tests.ports import free_port
from tests.proxy.running import ThreadedUpstream, cluster, exchange, hcm_bootstrap, read_head
from tests.proxy_process import ProxyProcess

OTHERS = 8   # requests sent while one is in flight, each on its own connection
BREAKER = """    circuit_breakers:
      thresholds: [{max_requests: 1, track_remaining: true}]"""
# (not remaining_cx: Envoy's pools open connections for requests the breaker then refuses)
GAUGES = r"^cluster\.web\.circuit_breakers\.default\.(rq_open|remaining_rq|remaining_pending)$"
# a request refused by max_requests: Envoy 1.40 counts it in upstream_rq_active_overflow
OVERFLOWS = r"^cluster\.web\.upstream_rq_active_overflow$"


class HeldUpstream(ThreadedUpstream):
    """An HTTP/1.1 upstream that holds every response until `release` (or 10 s)."""

    timeout = 15.0

    def __init__(self) -> None:
        self.requests = 0
        self.release = threading.Event()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        buffer = b""
        while not self.closing.is_set() and (request := read_head(conn, buffer)) is not None:
            buffer = request[1]
            self.requests += 1
            self.release.wait(10)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def close(self) -> None:
        self.release.set()
        super().close()


@dataclass
class Observed:
    held_status: bytes                # the request in flight, once released
    others: list[tuple[bytes, bool]]  # (status, x-envoy-overloaded) of those sent meanwhile
    others_reached_upstream: int
    in_flight: dict[str, int]         # the gauges while one request is in flight...
    after: dict[str, int]             # ...and once it is done
    overflows: int                    # requests refused, as counted


def observe(kind: Literal["envoy", "tulle-proxy"]) -> Observed:
    upstream = HeldUpstream()
    port = free_port()
    config = hcm_bootstrap(port, "              - {match: {prefix: /}, route: {cluster: web}}",
                           cluster("web", upstream.port, extra=BREAKER))
    proxy = ProxyProcess(kind, yaml.safe_load(config), prefix=f"workerbreaker-{kind}-", until_live=True,
                         concurrency=2)
    request = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    held: list[bytes] = []
    holder = threading.Thread(target=lambda: held.append(exchange(port, request, timeout=15)))
    try:
        holder.start()
        deadline = time.monotonic() + 10
        while upstream.requests < 1:
            assert time.monotonic() < deadline, "the first request never reached the upstream"
            time.sleep(0.01)
        time.sleep(0.3)   # tulle-proxy: the followers' stats snapshots (every 0.25 s) are fresh
        in_flight = proxy.stats(GAUGES)
        others = []
        for _ in range(OTHERS):
            head = exchange(port, request, timeout=2).partition(b"\r\n\r\n")[0].lower()
            others.append((head.split(b" ", 2)[1] if head else b"-", b"\r\nx-envoy-overloaded: true" in head))
        reached = upstream.requests - 1
        upstream.release.set()
        holder.join(15)
        time.sleep(0.3)
        return Observed(held[0].split(b" ", 2)[1] if held else b"-", others, reached, in_flight,
                        proxy.stats(GAUGES), sum(proxy.stats(OVERFLOWS).values()))
    finally:
        upstream.release.set()
        proxy.close()
        upstream.close()
        holder.join(1)


@pytest.fixture(scope="module")
def tulle() -> Iterator[Observed]:
    yield observe("tulle-proxy")


@pytest.fixture(scope="module")
def envoy() -> Iterator[Observed]:
    yield observe("envoy")


def test_max_requests_holds_for_the_whole_proxy_not_per_worker(tulle: Observed) -> None:
    assert tulle.held_status == b"200"
    assert tulle.others == [(b"503", True)] * OTHERS   # whichever worker took them
    assert tulle.others_reached_upstream == 0
    assert tulle.overflows == OTHERS


def test_the_breaker_gauges_are_the_proxys_not_a_sum_over_workers(tulle: Observed) -> None:
    prefix = "cluster.web.circuit_breakers.default."
    assert tulle.in_flight[f"{prefix}rq_open"] == 1
    assert tulle.in_flight[f"{prefix}remaining_rq"] == 0
    assert tulle.after[f"{prefix}rq_open"] == 0
    assert tulle.after[f"{prefix}remaining_rq"] == 1
    assert tulle.after[f"{prefix}remaining_pending"] == 1024


def test_circuit_breaking_under_concurrency_is_what_envoy_shows(tulle: Observed, envoy: Observed) -> None:
    assert tulle == envoy
