"""--concurrency 2 with outlier detection: one detector per cluster, fed by every worker. A host
is ejected after consecutive_5xx failures in a row whichever workers saw them (not that many
per worker), the ejection and the return reach every worker, and outlier_detection.* counts
one detector's decisions — as the real Envoy does with --concurrency 2 on the same bootstrap
and traffic. (The returned host answers 200: Envoy 1.40 keeps routing to a host ejected a
second time for a while, envoyproxy/envoy#40697, which is not what this is about.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from tests.ports import free_port
from tests.proxy.running import cluster, exchange, hcm_bootstrap
from tests.proxy.test_workers_health import ProbedUpstream
from tests.proxy_process import ProxyProcess

# With a detector per worker the host would take about twice as many failures (each worker
# its own streak), with one detector exactly this many however the kernel spread the requests.
CONSECUTIVE_5XX = 10
BASE_EJECTION_TIME = 3.0   # long enough for a round of requests to see the host ejected
REQUESTS = 40              # per round, each on its own connection: SO_REUSEPORT spreads them
OUTLIER = f"""    outlier_detection:
      consecutive_5xx: {CONSECUTIVE_5XX}
      interval: 0.5s
      base_ejection_time: {BASE_EJECTION_TIME}s
      max_ejection_percent: 100"""
STATS = ("ejections_active", "ejections_enforced_total", "ejections_total", "ejections_overflow",
         "ejections_detected_consecutive_5xx", "ejections_enforced_consecutive_5xx")


@dataclass
class Round:
    failing_requests: int     # requests the failing host got
    statuses: dict[bytes, int]
    workers_serving: int      # distinct upstream connections to the good host
    failing_connections: int  # distinct upstream connections to the failing host
    stats: dict[str, int]     # cluster.web.outlier_detection.*
    failing_flags: str        # the failing host's /clusters health_flags


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def health_flags(proxy: ProxyProcess, port: int) -> str:
    prefix = f"web::127.0.0.1:{port}::health_flags::"
    return next(line[len(prefix):] for line in proxy.get("/clusters").decode().splitlines()
                if line.startswith(prefix))


def round_of_requests(proxy: ProxyProcess, port: int, good: ProbedUpstream, failing: ProbedUpstream) -> Round:
    good.request_connections.clear()
    failing.request_connections.clear()
    before = failing.requests
    statuses: dict[bytes, int] = {}
    for _ in range(REQUESTS):
        status = exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").split(b" ", 2)[1]
        statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.02)   # Envoy's main thread (tulle-proxy's leader) ejects between requests
    stats = proxy.stats(r"^cluster\.web\.outlier_detection\.")
    return Round(failing.requests - before, statuses, len(good.request_connections), len(failing.request_connections),
                 {name: stats[f"cluster.web.outlier_detection.{name}"] for name in STATS},
                 health_flags(proxy, failing.port))


def observe(kind: Literal["envoy", "tulle-proxy"]) -> list[Round]:
    good, failing = ProbedUpstream(), ProbedUpstream(request_status=503)
    port = free_port()
    config = hcm_bootstrap(port, "              - {match: {prefix: /}, route: {cluster: web}}",
                           cluster("web", good.port, failing.port, extra=OUTLIER))
    proxy = ProxyProcess(kind, yaml.safe_load(config), prefix=f"workeroutlier-{kind}-", until_live=True,
                         concurrency=2)
    try:
        first = round_of_requests(proxy, port, good, failing)
        # back after base_ejection_time (on an interval tick), in every worker
        wait_for(lambda: health_flags(proxy, failing.port) == "healthy", "the host's return")
        failing.request_status = 200
        second = round_of_requests(proxy, port, good, failing)
        return [first, second]
    finally:
        proxy.close()
        good.close()
        failing.close()


@pytest.fixture(scope="module")
def tulle() -> Iterator[list[Round]]:
    yield observe("tulle-proxy")


@pytest.fixture(scope="module")
def envoy() -> Iterator[list[Round]]:
    yield observe("envoy")


def test_a_host_is_ejected_after_consecutive_failures_across_workers(tulle: list[Round]) -> None:
    first = tulle[0]
    assert first.workers_serving == 2   # both workers sent requests...
    assert first.failing_requests == CONSECUTIVE_5XX   # ...and their failures counted together
    assert first.statuses == {b"200": REQUESTS - CONSECUTIVE_5XX, b"503": CONSECUTIVE_5XX}
    assert first.failing_flags == "/failed_outlier_check"


def test_the_ejection_stats_are_one_detectors(tulle: list[Round]) -> None:
    assert tulle[0].stats["ejections_active"] == 1
    assert tulle[0].stats["ejections_enforced_total"] == 1
    assert tulle[0].stats["ejections_detected_consecutive_5xx"] == 1


def test_an_ejected_host_returns_to_every_worker(tulle: list[Round]) -> None:
    second = tulle[1]
    assert second.statuses == {b"200": REQUESTS}
    assert second.failing_connections == 2   # each worker's round robin sends it requests again
    assert second.stats["ejections_active"] == 0
    assert second.failing_flags == "healthy"


def test_outlier_detection_under_concurrency_is_what_envoy_shows(tulle: list[Round], envoy: list[Round]) -> None:
    # which worker took the failing host's few requests is the kernel's choice...
    assert {**vars(tulle[0]), "failing_connections": 0} == {**vars(envoy[0]), "failing_connections": 0}
    # ...and so, once it is back, how many it gets of each worker's round robin (odd shares round)
    assert {**vars(tulle[1]), "failing_requests": 0} == {**vars(envoy[1]), "failing_requests": 0}
