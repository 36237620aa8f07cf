"""Locality-weighted balancing (common_lb_config.locality_weighted_lb_config):
round robin shares and ring-hash / Maglev key mappings agree with the real Envoy."""

from __future__ import annotations

import http.client
import random
from collections import Counter

import pytest
import yaml

from proxy.upstream.balancer import hash_key_for, make_balancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.envoy_peer import envoy, free_port, upstreams

# Two localities: "a" (weight 1) with hosts 0, 1 and "b" (weight 3) with hosts 2, 3, 4.
LOCALITIES = [("a", 1, [0, 1]), ("b", 3, [2, 3, 4])]
HOSTS = 5
KEYS = [f"user-{i}" for i in range(200)]


def bootstrap(policy: str, ports: list[int], unhealthy: set[int], listener: int, admin: int) -> str:
    def address(port: int) -> dict[str, object]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    def endpoint(i: int) -> dict[str, object]:
        lb_endpoint: dict[str, object] = {"endpoint": {"address": address(ports[i])}}
        if i in unhealthy:
            lb_endpoint["health_status"] = "UNHEALTHY"
        return lb_endpoint

    route: dict[str, object] = {"cluster": "loc"}
    if policy in ("RING_HASH", "MAGLEV"):
        route["hash_policy"] = [{"header": {"header_name": "x-user"}}]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "main",
        "route_config": {"virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": route}]}
        ]},
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    cluster = {
        "name": "loc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": policy,
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "load_assignment": {
            "cluster_name": "loc",
            "endpoints": [
                {"locality": {"zone": zone}, "load_balancing_weight": weight,
                 "lb_endpoints": [endpoint(i) for i in members]}
                for zone, weight, members in LOCALITIES
            ],
        },
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


def envoy_picks(policy: str, unhealthy: set[int], requests: int) -> tuple[list[int], list[int]]:
    listener, admin = free_port(), free_port()
    with (
        upstreams(HOSTS) as ports,
        envoy(bootstrap(policy, ports, unhealthy, listener, admin), listener),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", listener, timeout=5)
        picks = []
        for i in range(requests):
            conn.request("GET", "/", headers={"x-user": KEYS[i % len(KEYS)]})
            picks.append(int(conn.getresponse().read()))
        conn.close()
        return picks, ports


def our_hosts(ports: list[int], unhealthy: set[int]) -> HostSet:
    hosts = []
    for zone, weight, members in LOCALITIES:
        for i in members:
            hosts.append(Host("127.0.0.1", ports[i], locality=zone, locality_weight=weight,
                              eds_health_failed=i in unhealthy))
    host_set = HostSet(hosts)
    host_set.set_locality_weighted(True)
    return host_set


@pytest.mark.parametrize(
    ("unhealthy", "expected_b"),
    # b with 1 of 3 healthy: effective weight 3 x min(1, 1.4 / 3) = 1.4, against a's 1.
    [(set(), 3 / 4), ({2, 3}, 1.4 / 2.4)],
    ids=["all-healthy", "b-mostly-down"],
)
def test_round_robin_locality_shares_match_envoy(unhealthy: set[int], expected_b: float) -> None:
    requests = 240
    theirs, ports = envoy_picks("ROUND_ROBIN", unhealthy, requests)
    host_set = our_hosts(ports, unhealthy)
    balancer = make_balancer("ROUND_ROBIN", host_set, None, random.Random(0))
    ours = []
    for _ in range(requests):
        host = balancer.choose()
        assert host is not None
        ours.append(ports.index(host.port))
    in_b = {2, 3, 4}
    their_b = sum(1 for i in theirs if i in in_b) / requests
    our_b = sum(1 for i in ours if i in in_b) / requests
    assert abs(their_b - our_b) <= 0.02  # both EDF: equal up to where each cycle starts
    assert Counter(theirs).keys() == Counter(ours).keys()
    assert abs(our_b - expected_b) <= 0.02


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_hash_mapping_with_localities_matches_envoy(policy: str) -> None:
    theirs, ports = envoy_picks(policy, set(), len(KEYS))
    balancer = make_balancer(policy, our_hosts(ports, set()), None, random.Random(0))
    ours = []
    for key in KEYS:
        host = balancer.choose(hash_key_for(key))
        assert host is not None
        ours.append(ports.index(host.port))
    assert ours == theirs
