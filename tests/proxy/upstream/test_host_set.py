import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from hypothesis import given
from hypothesis import strategies as st

from proxy.config_error import ConfigError
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet, panic_threshold_from_proto
from tests.proxy.upstream.hosts import make_hosts


def fail(hosts: list[Host], count: int) -> None:
    for host in hosts[:count]:
        host.health_check_failed = True


def test_routable_is_the_healthy_hosts_in_order() -> None:
    hosts = make_hosts(10)
    fail(hosts, 2)
    host_set = HostSet(hosts)
    assert host_set.routable() == tuple(hosts[2:])
    assert not host_set.in_panic


def test_below_panic_threshold_all_hosts_are_routable() -> None:
    hosts = make_hosts(10)
    fail(hosts, 6)  # 40% healthy < 50%
    host_set = HostSet(hosts)
    assert host_set.in_panic
    assert host_set.routable() == tuple(hosts)


def test_exactly_at_panic_threshold_is_not_panic() -> None:
    hosts = make_hosts(10)
    fail(hosts, 5)
    host_set = HostSet(hosts)
    assert not host_set.in_panic
    assert host_set.routable() == tuple(hosts[5:])


def test_overprovisioned_health_of_100_is_never_panic() -> None:
    # 8 of 10 healthy: 80% < 90% threshold, but 1.4 * 80% caps at 100%: Envoy stays out of panic.
    hosts = make_hosts(10)
    fail(hosts, 2)
    host_set = HostSet(hosts, panic_threshold_percent=90)
    assert not host_set.in_panic


def test_below_overprovisioned_health_and_threshold_is_panic() -> None:
    hosts = make_hosts(10)
    fail(hosts, 3)  # 70% healthy: 1.4 * 70 = 98 < 100, and 70 < 90
    host_set = HostSet(hosts, panic_threshold_percent=90)
    assert host_set.in_panic


def test_zero_threshold_disables_panic() -> None:
    hosts = make_hosts(3)
    fail(hosts, 3)
    host_set = HostSet(hosts, panic_threshold_percent=0)
    assert not host_set.in_panic
    assert host_set.routable() == ()


def test_empty_host_set_has_nothing_routable() -> None:
    assert HostSet([]).routable() == ()


def test_update_keeps_objects_of_persisting_hosts() -> None:
    a, b = make_hosts(2)
    a.active_requests = 3
    a.outlier_ejected = True
    host_set = HostSet([a, b])
    replacement = Host(a.address, a.port, weight=5)
    c = Host("127.0.0.2", 9000)
    host_set.update([replacement, c])
    assert host_set.hosts[0] is a
    assert a.weight == 5 and a.active_requests == 3 and a.outlier_ejected
    assert host_set.hosts[1] is c
    assert b not in host_set.hosts


def test_update_returns_the_priority_levels_that_gained_or_lost_hosts() -> None:
    host_set = HostSet(())
    assert host_set.update([Host("127.0.0.1", 80), Host("127.0.0.2", 80, locality_priority=1)]) == 2
    assert host_set.update([Host("127.0.0.1", 80, weight=3), Host("127.0.0.2", 80, locality_priority=1)]) == 0
    assert host_set.update([Host("127.0.0.1", 80), Host("127.0.0.3", 80, locality_priority=1)]) == 1
    # a host moving between levels leaves one and joins the other
    assert host_set.update([Host("127.0.0.1", 80, locality_priority=1), Host("127.0.0.3", 80, locality_priority=1)]) == 2


def test_update_drops_duplicate_addresses() -> None:
    host_set = HostSet([Host("127.0.0.1", 80), Host("127.0.0.1", 80)])
    assert len(host_set) == 1


def test_health_changed_recomputes_and_notifies_subscribers() -> None:
    hosts = make_hosts(3)
    host_set = HostSet(hosts)
    calls: list[int] = []
    host_set.subscribe(lambda: calls.append(1))
    hosts[0].outlier_ejected = True
    host_set.health_changed()
    assert host_set.healthy == tuple(hosts[1:])
    assert calls == [1]


def test_update_notifies_subscribers() -> None:
    host_set = HostSet(make_hosts(2))
    calls: list[int] = []
    host_set.subscribe(lambda: calls.append(1))
    host_set.update(make_hosts(3))
    assert calls == [1]


def at_priority(hosts: list[Host], priority: int) -> list[Host]:
    for host in hosts:
        host.locality_priority = priority
    return hosts


def loads(host_set: HostSet) -> list[int]:
    return [level.load for level in host_set.levels]


def test_healthy_priority_zero_takes_all_the_load() -> None:
    p0, p1 = make_hosts(3), at_priority(make_hosts(3, base_port=9000), 1)
    assert loads(HostSet(p0 + p1)) == [100, 0]
    assert HostSet(p0 + p1).routable() == tuple(p0)


def test_load_spills_to_the_next_priority_by_overprovisioned_health() -> None:
    p0, p1 = make_hosts(10), at_priority(make_hosts(10, base_port=9000), 1)
    fail(p0, 5)  # 50% healthy x 1.4 = 70
    host_set = HostSet(p0 + p1)
    assert loads(host_set) == [70, 30]
    assert not host_set.in_panic


def test_mostly_healthy_level_keeps_all_the_load() -> None:
    p0, p1 = make_hosts(10), at_priority(make_hosts(10, base_port=9000), 1)
    fail(p0, 2)  # 80% x 1.4 caps at 100
    assert loads(HostSet(p0 + p1)) == [100, 0]


def test_rounding_remainder_goes_to_the_first_level_with_health() -> None:
    p0, p1 = make_hosts(4), at_priority(make_hosts(5, base_port=9000), 1)
    fail(p0, 3)  # health 35
    fail(p1, 4)  # health 28; availability 63
    host_set = HostSet(p0 + p1, panic_threshold_percent=0)
    assert loads(host_set) == [56, 44]  # 55 + 44 + remainder 1 to P0


def test_panic_is_per_level_below_full_availability() -> None:
    p0, p1 = make_hosts(10), at_priority(make_hosts(2, base_port=9000), 1)
    fail(p0, 8)  # 20% healthy, health 28: panic
    fail(p1, 1)  # 50% healthy, health 70: not panic; availability 98
    host_set = HostSet(p0 + p1)
    assert [level.in_panic for level in host_set.levels] == [True, False]
    assert loads(host_set) == [29, 71]
    assert host_set.levels[0].routable == tuple(p0)
    assert host_set.levels[1].routable == (p1[1],)


def test_total_panic_splits_load_by_host_count() -> None:
    p0, p1 = make_hosts(4), at_priority(make_hosts(5, base_port=9000), 1)
    fail(p0, 3)
    fail(p1, 4)
    host_set = HostSet(p0 + p1)
    assert loads(host_set) == [45, 55]
    assert host_set.routable() == tuple(p0 + p1)


def test_choose_level_maps_values_onto_cumulative_loads() -> None:
    p0, p1 = make_hosts(10), at_priority(make_hosts(10, base_port=9000), 1)
    fail(p0, 5)  # loads 70 / 30
    host_set = HostSet(p0 + p1)
    assert host_set.choose_level(0) == 0  # 0 % 100 + 1 = 1
    assert host_set.choose_level(69) == 0  # 70
    assert host_set.choose_level(70) == 1  # 71
    assert host_set.choose_level(199) == 1  # 100


def test_panic_threshold_from_proto_rounds_like_envoy() -> None:
    config = Cluster.CommonLbConfig()
    assert panic_threshold_from_proto(config) == 50.0
    assert panic_threshold_from_proto(None) == 50.0
    config.healthy_panic_threshold.value = 33.6
    assert panic_threshold_from_proto(config) == 34.0
    config.healthy_panic_threshold.value = 0
    assert panic_threshold_from_proto(config) == 0.0


def test_panic_threshold_from_proto_rejects_zone_aware_routing() -> None:
    config = Cluster.CommonLbConfig()
    config.zone_aware_lb_config.SetInParent()
    with pytest.raises(ConfigError, match=r"common_lb_config\.zone_aware_lb_config"):
        panic_threshold_from_proto(config)


@given(
    levels=st.lists(
        st.tuples(st.integers(1, 12), st.integers(0, 12)), min_size=1, max_size=4
    ),
    threshold=st.sampled_from([0.0, 50.0, 80.0]),
)
def test_level_loads_always_add_up_to_100(levels: list[tuple[int, int]], threshold: float) -> None:
    hosts: list[Host] = []
    for priority, (size, unhealthy) in enumerate(levels):
        members = at_priority(make_hosts(size, base_port=1000 * (priority + 1)), priority)
        fail(members, min(unhealthy, size))
        hosts += members
    host_set = HostSet(hosts, panic_threshold_percent=threshold)
    assert sum(loads(host_set)) == 100
    assert all(load >= 0 for load in loads(host_set))
    if host_set.levels[0].health == 100:
        assert loads(host_set)[0] == 100
    if host_set.healthy or threshold > 0:
        assert host_set.routable()


def test_update_takes_eds_health_from_the_new_description() -> None:
    a = Host("127.0.0.1", 80)
    a.outlier_ejected = True
    host_set = HostSet([a, Host("127.0.0.1", 81)])
    host_set.update([Host("127.0.0.1", 80, eds_health_failed=True), Host("127.0.0.1", 81)])
    assert a.eds_health_failed and a.outlier_ejected
    host_set.update([Host("127.0.0.1", 80), Host("127.0.0.1", 81)])
    assert not a.eds_health_failed and a.outlier_ejected


def in_locality(hosts: list[Host], locality: str, weight: int) -> list[Host]:
    for host in hosts:
        host.locality, host.locality_weight = locality, weight
    return hosts


def test_localities_are_grouped_only_when_locality_weighted() -> None:
    hosts = in_locality(make_hosts(2), "a", 1) + in_locality(make_hosts(2, base_port=9000), "b", 3)
    host_set = HostSet(hosts)
    assert not host_set.levels[0].localities
    host_set.set_locality_weighted(True)
    summary = [(group.locality, group.weight, len(group.hosts)) for group in host_set.levels[0].localities]
    assert summary == [("a", 1, 2), ("b", 3, 2)]


def test_locality_effective_weight_follows_overprovisioned_health() -> None:
    a = in_locality(make_hosts(10), "a", 10)
    fail(a, 5)  # 50% x 1.4 = 70%
    host_set = HostSet(a)
    host_set.set_locality_weighted(True)
    assert host_set.levels[0].localities[0].effective_weight == pytest.approx(7.0)
