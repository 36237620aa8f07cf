from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
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
