"""--concurrency 2 with active HTTP health checks: each host is probed once per interval (the
leader's checker), a host that turns unhealthy is avoided by every worker, the health_check.*
stats are one checker's — and the real Envoy, with --concurrency 2 on the same bootstrap and
traffic, agrees."""

from __future__ import annotations

import itertools
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from tests.ports import free_port
from tests.proxy.running import ThreadedUpstream, exchange, read_head
from tests.proxy.test_xds import (
    CLUSTER,
    LISTENER,
    ROUTE,
    AdsServer,
    ads,  # noqa: F401 - the fixture
    ads_bootstrap,
    listener,
    message,
    routes,
)
from tests.proxy_process import TULLE, ProxyProcess

INTERVAL = 0.25   # health check interval (with and without traffic)
WINDOW = 2.0      # seconds over which probes are counted
REQUESTS = 40     # each on its own downstream connection: SO_REUSEPORT spreads them


class ProbedUpstream(ThreadedUpstream):
    """A keep-alive HTTP/1.1 upstream: GET /healthz answers `health_status`, anything else
    `request_status`. Counts the probes and the requests, and the connections each came on."""

    timeout = 5.0

    def __init__(self, request_status: int = 200, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.health_status = 200
        self.request_status = request_status
        self.probes = 0
        self.requests = 0
        self.probe_connections: set[int] = set()
        self.request_connections: set[int] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        super().__init__(address)

    def serve(self, conn: socket.socket) -> None:
        ident = next(self._ids)
        buffer = b""
        while not self.closing.is_set() and (request := read_head(conn, buffer)) is not None:
            head, buffer = request
            probe = head.split(b" ", 2)[1] == b"/healthz"
            with self._lock:
                if probe:
                    self.probes += 1
                    self.probe_connections.add(ident)
                else:
                    self.requests += 1
                    self.request_connections.add(ident)
            status = self.health_status if probe else self.request_status
            conn.sendall(b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n\r\nok" % status)


def bootstrap(listener: int, ports: list[int]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                 for port in ports]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {"name": "local", "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "web"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {"static_resources": {
        "listeners": [{"name": "main",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [{"name": "web", "type": "STATIC", "connect_timeout": "1s",
                      "health_checks": [{"timeout": "1s", "interval": f"{INTERVAL}s",
                                         "no_traffic_interval": f"{INTERVAL}s",
                                         "unhealthy_threshold": 2, "healthy_threshold": 1,
                                         "http_health_check": {"path": "/healthz"}}],
                      "load_assignment": {"cluster_name": "web", "endpoints": [{"lb_endpoints": endpoints}]}}],
    }}


def host_fields(proxy: ProxyProcess, port: int) -> dict[str, str]:
    """The /clusters fields of host 127.0.0.1:`port` of cluster web."""
    prefix = f"web::127.0.0.1:{port}::"
    return {line[len(prefix):].partition("::")[0]: line[len(prefix):].partition("::")[2]
            for line in proxy.get("/clusters").decode().splitlines() if line.startswith(prefix)}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Observed:
    probes_per_interval: float        # probes per host per health check interval, both hosts warm
    probes_in_window: list[int]       # per host
    intervals_in_window: float        # how many health check intervals the window lasted
    probe_connections: list[int]      # per host: one per probing worker (reuse_connection)
    probes_before: int                # probes the upstreams saw before the stats were read...
    attempts: int                     # ...health_check.attempt then...
    probes_after: int                 # ...and probes seen after
    stats: dict[str, int]             # cluster.web's health_check.* and membership_* gauges
    statuses: list[bytes]
    served_by_unhealthy: int          # requests the failed host got after it failed
    workers_serving: int              # distinct upstream connections carrying requests
    failed_fields: dict[str, str]     # /clusters fields of the failed host
    healthy_fields: dict[str, str]    # /clusters fields of the other


def observe(kind: Literal["envoy", "tulle-proxy"]) -> Observed:
    a, b = ProbedUpstream(), ProbedUpstream()
    port = free_port()
    proxy = ProxyProcess(kind, bootstrap(port, [a.port, b.port]), prefix=f"workerhealth-{kind}-",
                         until_live=True, concurrency=2)
    try:
        wait_for(lambda: all(host_fields(proxy, p).get("health_flags") == "healthy" for p in (a.port, b.port)),
                 "both hosts healthy")
        began, start = time.monotonic(), (a.probes, b.probes)
        time.sleep(WINDOW)
        window = [a.probes - start[0], b.probes - start[1]]
        intervals = (time.monotonic() - began) / INTERVAL
        probes_before = a.probes + b.probes
        stats = proxy.stats(r"^cluster\.web\.(health_check|membership)")
        probes_after = a.probes + b.probes

        b.health_status = 503   # an active failure: unhealthy at its next check
        wait_for(lambda: host_fields(proxy, b.port).get("health_flags") != "healthy", "b to fail")
        time.sleep(0.2)   # the leader's report reaches the followers (Envoy: the main thread's update)
        served_before = b.requests
        statuses = [exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").split(b" ", 2)[1]
                    for _ in range(REQUESTS)]
        after = proxy.stats(r"^cluster\.web\.(health_check|membership)")
        return Observed(
            probes_per_interval=sum(window) / 2 / intervals,
            probes_in_window=window,
            intervals_in_window=intervals,
            probe_connections=[len(a.probe_connections), len(b.probe_connections)],
            probes_before=probes_before, attempts=stats["cluster.web.health_check.attempt"],
            probes_after=probes_after,
            stats={name: value for name, value in after.items()   # the gauges (counters depend on timing)
                   if not name.endswith(("attempt", "success", "failure", "membership_change"))},
            statuses=statuses,
            served_by_unhealthy=b.requests - served_before,
            workers_serving=len(a.request_connections),
            failed_fields=host_fields(proxy, b.port),
            healthy_fields=host_fields(proxy, a.port),
        )
    finally:
        proxy.close()
        a.close()
        b.close()


@pytest.fixture(scope="module")
def tulle() -> Iterator[Observed]:
    yield observe("tulle-proxy")


@pytest.fixture(scope="module")
def envoy() -> Iterator[Observed]:
    yield observe("envoy")


def test_each_host_is_probed_once_per_interval_not_once_per_worker(tulle: Observed) -> None:
    print(f"tulle-proxy --concurrency 2: {tulle.probes_per_interval:.2f} probes per host per interval")
    # One checker probes a host at most once per interval (the next check starts an interval
    # after the previous one ended); a checker per worker would double this.
    assert all(count <= tulle.intervals_in_window + 1 for count in tulle.probes_in_window), tulle
    assert tulle.probe_connections == [1, 1]   # one probing worker, its connection reused


def test_the_health_check_stats_are_one_checkers(tulle: Observed) -> None:
    # every probe an upstream saw was counted by the one checker, and at most one per host
    # was counted but not yet seen
    assert tulle.probes_before <= tulle.attempts <= tulle.probes_after + 2
    assert tulle.stats["cluster.web.health_check.healthy"] == 1   # after b failed: 1, not 1 per worker


def test_a_host_that_turns_unhealthy_is_avoided_by_every_worker(tulle: Observed) -> None:
    assert tulle.statuses == [b"200"] * REQUESTS
    assert tulle.workers_serving == 2   # each worker pools its own connection: both served
    assert tulle.served_by_unhealthy == 0
    assert tulle.failed_fields["health_flags"] == "/failed_active_hc"


def test_health_under_concurrency_is_what_envoy_shows(tulle: Observed, envoy: Observed) -> None:
    print(f"probes per host per interval: tulle-proxy {tulle.probes_per_interval:.2f}, "
          f"envoy {envoy.probes_per_interval:.2f}")
    assert envoy.probe_connections == tulle.probe_connections == [1, 1]
    shared = tulle.stats.keys() & envoy.stats.keys()
    assert {"cluster.web.health_check.healthy", "cluster.web.membership_healthy",
            "cluster.web.membership_total", "cluster.web.membership_degraded",
            "cluster.web.membership_excluded"} <= shared
    assert {name: tulle.stats[name] for name in shared} == {name: envoy.stats[name] for name in shared}
    assert (tulle.served_by_unhealthy, tulle.workers_serving) == (envoy.served_by_unhealthy, envoy.workers_serving)
    for field in ("health_flags", "success_rate", "local_origin_success_rate"):
        assert tulle.failed_fields[field] == envoy.failed_fields[field], field
        assert tulle.healthy_fields[field] == envoy.healthy_fields[field], field


def test_a_cluster_cds_brings_is_probed_once_and_its_health_reaches_every_worker(
        ads: AdsServer, tmp_path: Path) -> None:  # noqa: F811
    """The leader warms a CDS cluster (its first round of checks) before it forwards the
    update: a follower gets the health before the cluster, keeps it, and applies it when the
    cluster arrives — so its failed host is avoided from the first request."""
    a, b = ProbedUpstream(), ProbedUpstream()
    b.health_status = 503
    port, admin = free_port(), free_port()
    config = tmp_path / "bootstrap.yaml"
    config.write_text(ads_bootstrap(ads, "GRPC", admin))
    log = open(tmp_path / "proxy.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen([str(TULLE), "-c", str(config), "--concurrency", "2", "--log-level", "warning"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ads.wait_request(lambda r: r.type_url == LISTENER)
        cluster = bootstrap(0, [a.port, b.port])["static_resources"]["clusters"][0]
        ads.push(CLUSTER, "c1", [message(Cluster, yaml.safe_dump(cluster))])
        ads.push(LISTENER, "l1", [listener(port)])
        ads.wait_request(lambda r: r.type_url == ROUTE and list(r.resource_names) == ["routes"])
        nonce = ads.push(ROUTE, "r1", [routes(None)])
        ads.wait_request(lambda r: r.type_url == ROUTE and r.response_nonce == nonce)
        time.sleep(0.5)   # the follower applies what the leader forwarded
        statuses = [exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").split(b" ", 2)[1]
                    for _ in range(REQUESTS)]
        assert statuses == [b"200"] * REQUESTS
        assert len(a.request_connections) == 2   # both workers served...
        assert b.requests == 0                    # ...and neither sent anything to the failed host
        assert [len(a.probe_connections), len(b.probe_connections)] == [1, 1]
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        a.close()
        b.close()
