"""The hash balancers pick exactly the host the real Envoy picks for the same key."""

import random

import pytest

from proxy.upstream.balancer import hash_key_for_header, make_balancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.envoy_peer import envoy_picks

# 200 single values, and 20 requests carrying the header twice (values in either order).
KEYS: list[str | tuple[str, ...]] = [f"user-{i}" for i in range(200)]
KEYS += [(f"b-{i}", f"a-{i}") if i % 2 else (f"a-{i}", f"b-{i}") for i in range(20)]


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
@pytest.mark.parametrize("weights", [[1, 1, 1, 1], [1, 3, 2, 5]], ids=["equal", "weighted"])
def test_same_host_as_envoy_for_200_keys(policy: str, weights: list[int]) -> None:
    envoy_choice, ports = envoy_picks(policy, weights, KEYS)
    hosts = [Host("127.0.0.1", port, weight=w) for port, w in zip(ports, weights, strict=True)]
    balancer = make_balancer(policy, HostSet(hosts), None, random.Random(0))
    ours = []
    for key in KEYS:
        host = balancer.choose(hash_key_for_header((key,) if isinstance(key, str) else key))
        assert host is not None
        ours.append(hosts.index(host))
    assert ours == envoy_choice
    assert len(set(ours)) == len(hosts)  # the keys do spread
