"""Outlier detection, circuit breaker and health check stats: the same names as the
real Envoy's /stats, and for a deterministic failure pattern the same outlier values."""

from __future__ import annotations

import http.client
import random
import time

import pytest
import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf import json_format

from proxy.stats_text import parse_stats
from proxy.upstream.balancer.round_robin import RoundRobinBalancer
from proxy.upstream.circuit_breaker import CircuitBreaker, CircuitBreakerThresholds
from proxy.upstream.health.prober import HealthCheckStats
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.outlier import OutlierConfig, OutlierDetector
from tests.proxy.upstream.envoy_peer import envoy, free_port, upstreams

REQUESTS = 30


def endpoints(name: str, ports: list[int]) -> dict[str, object]:
    return {
        "cluster_name": name,
        "endpoints": [
            {"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                for p in ports
            ]}
        ],
    }


def outlier_cluster(ports: list[int], enforce_gateway: int, split: bool = False) -> dict[str, object]:
    return {
        "name": "od",
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {"thresholds": [{"max_requests": 100, "track_remaining": True}]},
        "outlier_detection": {
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": enforce_gateway,
            "max_ejection_percent": 100,
            "interval": "60s",
            **({"split_external_local_origin_errors": True, "consecutive_local_origin_failure": 2} if split else {}),
        },
        "load_assignment": endpoints("od", ports),
    }


def bootstrap(cluster: dict[str, object], hc_port: int, listener: int, admin: int) -> str:
    def address(port: int) -> dict[str, object]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "main",
        "route_config": {"virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "od"}}]}
        ]},
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    health_checked = {
        "name": "hc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "health_checks": [{
            "timeout": "1s", "interval": "0.1s", "no_traffic_interval": "0.1s",
            "unhealthy_threshold": 2, "healthy_threshold": 1, "http_health_check": {"path": "/healthz"},
        }],
        "load_assignment": endpoints("hc", [hc_port]),
    }
    return yaml.safe_dump({
        "admin": {"address": address(admin)},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": address(listener),
                "filter_chains": [{"filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]}],
            }],
            "clusters": [cluster, health_checked],
        },
    })


def envoy_stats(enforce_gateway: int, split: bool = False) -> dict[str, int]:
    """Envoy's /stats after REQUESTS requests over three hosts: the first answers 502
    (or, with `split`, refuses connections), the others 200."""
    listener, admin = free_port(), free_port()
    with upstreams(4, statuses=[502, 200, 200, 200]) as ports:
        hosts = [free_port() if split else ports[0], *ports[1:3]]
        config = bootstrap(outlier_cluster(hosts, enforce_gateway, split), ports[3], listener, admin)
        with envoy(config, listener):
            conn = http.client.HTTPConnection("127.0.0.1", listener, timeout=5)
            for _ in range(REQUESTS):
                conn.request("GET", "/")
                conn.getresponse().read()
            conn.close()
            time.sleep(0.3)  # a few health checks of cluster hc
            admin_conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            admin_conn.request("GET", "/stats")
            text = admin_conn.getresponse().read().decode()
    return dict(parse_stats(text).values)


def our_outlier_stats(enforce_gateway: int, split: bool = False) -> dict[str, int]:
    cluster = json_format.ParseDict(outlier_cluster([1, 2, 3], enforce_gateway, split), Cluster())
    hosts = [Host("127.0.0.1", port) for port in (1, 2, 3)]
    bad = hosts[0]
    host_set = HostSet(hosts)
    balancer = RoundRobinBalancer(host_set, random.Random(0))
    host_set.subscribe(balancer.hosts_changed)
    detector = OutlierDetector(OutlierConfig.from_proto(cluster.outlier_detection), host_set, random.Random(0))
    for _ in range(REQUESTS):
        host = balancer.choose()
        bad_outcome = None if split else 502  # None: the connection was refused
        detector.record(host, bad_outcome if host is bad else 200, 0.0)  # type: ignore[arg-type]
    return {f"cluster.od.{name}": value for name, value in detector.stats.as_dict().items()}


def scoped(stats: dict[str, int], prefix: str) -> dict[str, int]:
    return {name: value for name, value in stats.items() if name.startswith(prefix)}


@pytest.mark.parametrize(
    ("enforce_gateway", "split"),
    [(100, False), (0, False), (0, True)],
    ids=["gateway-enforced", "gateway-detected-only", "split-local-origin"],
)
def test_outlier_stats_match_envoy(enforce_gateway: int, split: bool) -> None:
    theirs = scoped(envoy_stats(enforce_gateway, split), "cluster.od.outlier_detection.")
    ours = our_outlier_stats(enforce_gateway, split)
    assert ours == theirs
    assert ours["cluster.od.outlier_detection.ejections_active"] == 1


def test_circuit_breaker_and_health_check_stat_names_are_envoys() -> None:
    theirs = envoy_stats(100)
    breaker = CircuitBreaker(CircuitBreakerThresholds(max_requests=100, track_remaining=True))
    for _ in range(2):  # Envoy reports two pools in use at that point (the healthy hosts)
        breaker.open_pool()
    assert breaker.stats()["circuit_breakers.default.remaining_cx_pools"] == (
        theirs["cluster.od.circuit_breakers.default.remaining_cx_pools"]
    )
    for name in breaker.stats():
        assert f"cluster.od.{name}" in theirs, name
    breaker_names = {f"cluster.od.{n}" for n in breaker.stats() if n.startswith("circuit_breakers.")}
    assert breaker_names == set(scoped(theirs, "cluster.od.circuit_breakers.default."))
    ours = {f"cluster.hc.{name}" for name in HealthCheckStats().as_dict()}
    assert ours == set(scoped(theirs, "cluster.hc.health_check."))
