import random
from collections import Counter

from proxy.upstream.balancer.random import RandomBalancer
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts


def test_picks_are_uniform_over_routable_hosts() -> None:
    hosts = make_hosts(4)
    balancer = RandomBalancer(HostSet(hosts), random.Random(11))
    counts = Counter(balancer.choose() for _ in range(40_000))
    for host in hosts:
        assert abs(counts[host] - 10_000) < 400  # > 4 sigma for a binomial(40000, 1/4)


def test_weights_are_ignored_as_in_envoy() -> None:
    hosts = make_hosts(2, weights=[1, 9])
    balancer = RandomBalancer(HostSet(hosts), random.Random(5))
    counts = Counter(balancer.choose() for _ in range(10_000))
    assert abs(counts[hosts[0]] - 5_000) < 250


def test_same_seed_same_sequence() -> None:
    hosts = make_hosts(5)
    a = RandomBalancer(HostSet(hosts), random.Random(9))
    b = RandomBalancer(HostSet(hosts), random.Random(9))
    assert [a.choose() for _ in range(50)] == [b.choose() for _ in range(50)]


def test_unhealthy_hosts_are_not_picked() -> None:
    hosts = make_hosts(3)
    hosts[2].outlier_ejected = True
    balancer = RandomBalancer(HostSet(hosts), random.Random(2))
    assert hosts[2] not in {balancer.choose() for _ in range(200)}


def test_no_routable_host_chooses_none() -> None:
    assert RandomBalancer(HostSet([]), random.Random(0)).choose() is None
