"""Priority levels, failover shares and panic: the real Envoy and our HostSet agree.

Hosts are marked unhealthy through EDS health_status (static endpoints carry it too),
so no timing is involved; shares are compared statistically."""

from __future__ import annotations

import http.client
import random
from collections import Counter

import pytest
import yaml

from proxy.stats_text import parse_stats
from proxy.upstream.balancer import make_balancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.envoy_peer import envoy, free_port, upstreams

REQUESTS = 600


def bootstrap(ports: list[int], priorities: list[int], unhealthy: set[int], panic: float,
              listener: int, admin: int) -> str:
    def address(port: int) -> dict[str, object]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    by_priority: dict[int, list[dict[str, object]]] = {}
    for i, (port, priority) in enumerate(zip(ports, priorities, strict=True)):
        endpoint: dict[str, object] = {"endpoint": {"address": address(port)}}
        if i in unhealthy:
            endpoint["health_status"] = "UNHEALTHY"
        by_priority.setdefault(priority, []).append(endpoint)
    cluster = {
        "name": "prio",
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "RANDOM",
        "common_lb_config": {"healthy_panic_threshold": {"value": panic}},
        "load_assignment": {
            "cluster_name": "prio",
            "endpoints": [{"priority": p, "lb_endpoints": eps} for p, eps in sorted(by_priority.items())],
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "main",
        "route_config": {"virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "prio"}}]}
        ]},
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
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
            "clusters": [cluster],
        },
    })


def envoy_run(priorities: list[int], unhealthy: set[int], panic: float) -> tuple[Counter[int], int]:
    """How often Envoy picked each upstream, and its lb_healthy_panic counter."""
    listener, admin = free_port(), free_port()
    with (
        upstreams(len(priorities)) as ports,
        envoy(bootstrap(ports, priorities, unhealthy, panic, listener, admin), listener),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", listener, timeout=5)
        picks: Counter[int] = Counter()
        for _ in range(REQUESTS):
            conn.request("GET", "/")
            picks[int(conn.getresponse().read())] += 1
        conn.close()
        admin_conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        admin_conn.request("GET", "/stats?filter=cluster.prio.lb_healthy_panic")
        text = admin_conn.getresponse().read().decode()
    panic_count = parse_stats(text).values["cluster.prio.lb_healthy_panic"]
    return picks, panic_count


def our_model(priorities: list[int], unhealthy: set[int], panic: float) -> HostSet:
    hosts = [
        Host("127.0.0.1", 1000 + i, locality_priority=p, eds_health_failed=i in unhealthy)
        for i, p in enumerate(priorities)
    ]
    return HostSet(hosts, panic)


def share(picks: Counter[int], members: list[int]) -> float:
    return sum(picks[i] for i in members) / REQUESTS


CASES = {
    # P0 half unhealthy: 1.4 x 50% = 70% of the load stays, 30% fails over to P1.
    "failover-70-30": ([0] * 10 + [1] * 10, set(range(5)), 50.0),
    # P0 with 2 of 10 healthy (health 28) in panic, P1 half healthy (70): 29/71.
    "level-panic": ([0] * 10 + [1] * 2, set(range(8)) | {10}, 50.0),
    # One level, 20% healthy: panic, every host gets traffic.
    "panic-all-hosts": ([0] * 10, set(range(8)), 50.0),
    # Panic disabled: only the 2 healthy hosts.
    "panic-disabled": ([0] * 10, set(range(8)), 0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_shares_and_panic_match_envoy(case: str) -> None:
    priorities, unhealthy, panic = CASES[case]
    theirs, their_panic = envoy_run(priorities, unhealthy, panic)
    host_set = our_model(priorities, unhealthy, panic)
    index = {host: i for i, host in enumerate(host_set.hosts)}
    # The same hosts receive traffic...
    assert set(theirs) == {index[h] for h in host_set.routable()}
    # ...each level gets its load share (Envoy's picks are random: a 4-sigma margin)...
    for level in host_set.levels:
        members = [index[h] for h in level.hosts]
        assert abs(share(theirs, members) - level.load / 100) < 0.08, level.priority
    # ...and every pick from a level in panic is counted.
    expected_panic = sum(level.load for level in host_set.levels if level.in_panic) / 100 * REQUESTS
    assert abs(their_panic - expected_panic) < 0.08 * REQUESTS
    # Our balancer, on the same hosts, agrees with the model it reads.
    balancer = make_balancer("RANDOM", host_set, None, random.Random(0))
    ours: Counter[int] = Counter()
    for _ in range(REQUESTS):
        host = balancer.choose()
        assert host is not None
        ours[index[host]] += 1
    assert set(ours) == set(theirs)
