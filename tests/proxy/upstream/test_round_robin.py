import random
from collections import Counter

from proxy.upstream.balancer.round_robin import RoundRobinBalancer
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts


def test_equal_weights_rotate_through_every_host() -> None:
    hosts = make_hosts(4)
    balancer = RoundRobinBalancer(HostSet(hosts), random.Random(1))
    first = balancer.choose()
    assert first is not None
    start = hosts.index(first)
    picks = [first] + [balancer.choose() for _ in range(7)]
    assert picks == [hosts[(start + i) % 4] for i in range(8)]


def test_rotation_starts_at_a_random_offset() -> None:
    hosts = make_hosts(5)
    starts = {RoundRobinBalancer(HostSet(hosts), random.Random(seed)).choose() for seed in range(40)}
    assert len(starts) == 5


def test_unequal_weights_pick_in_proportion() -> None:
    hosts = make_hosts(3, weights=[1, 2, 5])
    balancer = RoundRobinBalancer(HostSet(hosts), random.Random(7))
    counts = Counter(balancer.choose() for _ in range(800))
    assert [counts[h] for h in hosts] == [100, 200, 500]


def test_unhealthy_hosts_are_skipped() -> None:
    hosts = make_hosts(4)
    hosts[1].health_check_failed = True
    balancer = RoundRobinBalancer(HostSet(hosts), random.Random(3))
    assert {balancer.choose() for _ in range(30)} == {hosts[0], hosts[2], hosts[3]}


def test_panic_balances_over_all_hosts() -> None:
    hosts = make_hosts(4)
    for host in hosts[:3]:
        host.health_check_failed = True
    balancer = RoundRobinBalancer(HostSet(hosts), random.Random(3))
    assert {balancer.choose() for _ in range(8)} == set(hosts)


def test_no_routable_host_chooses_none() -> None:
    assert RoundRobinBalancer(HostSet([]), random.Random(0)).choose() is None


def test_health_change_is_picked_up_after_hosts_changed() -> None:
    hosts = make_hosts(3)
    host_set = HostSet(hosts)
    balancer = RoundRobinBalancer(host_set, random.Random(0))
    host_set.subscribe(balancer.hosts_changed)
    hosts[0].outlier_ejected = True
    host_set.health_changed()
    assert hosts[0] not in {balancer.choose() for _ in range(12)}


def test_weight_change_switches_to_weighted_schedule() -> None:
    hosts = make_hosts(2)
    host_set = HostSet(hosts)
    balancer = RoundRobinBalancer(host_set, random.Random(0))
    host_set.subscribe(balancer.hosts_changed)
    host_set.update(make_hosts(2, weights=[3, 1]))
    counts = Counter(balancer.choose() for _ in range(400))
    assert [counts[h] for h in hosts] == [300, 100]


def test_priority_levels_share_requests_by_load() -> None:
    p0 = make_hosts(10)
    p1 = make_hosts(10, base_port=9000)
    for host in p1:
        host.locality_priority = 1
    for host in p0[:5]:
        host.health_check_failed = True  # P0 gets 70%, P1 30%
    balancer = RoundRobinBalancer(HostSet(p0 + p1), random.Random(6))
    picks = [balancer.choose() for _ in range(10_000)]
    to_p1 = sum(1 for h in picks if h is not None and h.locality_priority == 1)
    assert abs(to_p1 - 3000) < 200
    assert not any(h in picks for h in p0[:5])


def test_localities_share_by_weight() -> None:
    a = make_hosts(2)
    b = make_hosts(2, base_port=9000)
    for host in a:
        host.locality, host.locality_weight = "a", 1
    for host in b:
        host.locality, host.locality_weight = "b", 3
    host_set = HostSet(a + b)
    host_set.set_locality_weighted(True)
    balancer = RoundRobinBalancer(host_set, random.Random(2))
    host_set.subscribe(balancer.hosts_changed)
    counts = Counter(balancer.choose() for _ in range(400))
    assert sum(counts[h] for h in b) == 300
    assert all(counts[h] == 150 for h in b) and all(counts[h] == 50 for h in a)


def test_a_level_in_panic_ignores_localities() -> None:
    a = make_hosts(4)
    for host in a:
        host.locality, host.locality_weight = "a", 1
        host.health_check_failed = True
    b = make_hosts(1, base_port=9000)
    b[0].locality, b[0].locality_weight = "b", 100
    host_set = HostSet(a + b)  # 1 of 5 healthy: panic
    host_set.set_locality_weighted(True)
    balancer = RoundRobinBalancer(host_set, random.Random(2))
    counts = Counter(balancer.choose() for _ in range(50))
    assert all(counts[h] == 10 for h in a + b)
