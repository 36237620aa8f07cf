"""Weighted round robin: Envoy's EDF schedule and ours are the same cycle; only the
starting point differs (each proxy draws its own random start)."""

import random

import pytest

from proxy.upstream.balancer import make_balancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.envoy_peer import envoy_sequence


def is_rotation(cycle: list[int], sequence: list[int]) -> bool:
    doubled = sequence + sequence
    return any(doubled[k : k + len(cycle)] == cycle for k in range(len(sequence)))


@pytest.mark.parametrize("weights", [[1, 2, 3], [2, 3, 5], [1, 1, 4, 2], [1, 1, 1]])
def test_weighted_cycle_matches_envoy(weights: list[int]) -> None:
    period = sum(weights)
    theirs, ports = envoy_sequence("ROUND_ROBIN", weights, 2 * period)
    assert theirs[:period] == theirs[period:]  # Envoy's schedule is periodic
    hosts = [Host("127.0.0.1", port, weight=w) for port, w in zip(ports, weights, strict=True)]
    balancer = make_balancer("ROUND_ROBIN", HostSet(hosts), None, random.Random(0))
    ours = []
    for _ in range(period):
        host = balancer.choose()
        assert host is not None
        ours.append(hosts.index(host))
    assert is_rotation(theirs[:period], ours)
