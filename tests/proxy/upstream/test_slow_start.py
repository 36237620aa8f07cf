import random
from collections import Counter

from proxy.upstream.balancer.least_request import LeastRequestBalancer, LeastRequestConfig
from proxy.upstream.balancer.round_robin import RoundRobinBalancer
from proxy.upstream.balancer.slow_start import SlowStartConfig
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts

WINDOW = SlowStartConfig(window=10.0)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def warm_and_new() -> tuple[Host, Host]:
    old, new = make_hosts(2)
    old.last_hc_pass_time = -100.0  # passed long ago: fully warm
    new.last_hc_pass_time = 0.0  # just passed its health check
    return old, new


def share_of(balancer: RoundRobinBalancer | LeastRequestBalancer, host: Host, picks: int = 2200) -> float:
    counts = Counter(balancer.choose() for _ in range(picks))
    return counts[host] / picks


def test_new_host_starts_at_the_minimum_weight() -> None:
    old, new = warm_and_new()
    balancer = RoundRobinBalancer(HostSet([old, new]), random.Random(0), WINDOW, FakeClock(0.0))
    assert abs(share_of(balancer, new) - 0.1 / 1.1) < 0.01


def test_weight_grows_linearly_through_the_window() -> None:
    old, new = warm_and_new()
    clock = FakeClock(0.0)
    host_set = HostSet([old, new])
    balancer = RoundRobinBalancer(host_set, random.Random(0), WINDOW, clock)
    clock.now = 5.0
    host_set.subscribe(balancer.hosts_changed)
    host_set.health_changed()  # a rebuild at t=5 (weights are read at each pick anyway)
    assert abs(share_of(balancer, new) - 0.5 / 1.5) < 0.01


def test_after_the_window_hosts_share_equally() -> None:
    old, new = warm_and_new()
    clock = FakeClock(0.0)
    host_set = HostSet([old, new])
    balancer = RoundRobinBalancer(host_set, random.Random(0), WINDOW, clock)
    clock.now = 11.0
    host_set.subscribe(balancer.hosts_changed)
    host_set.health_changed()
    assert share_of(balancer, new) == 0.5


def test_aggression_bends_the_ramp() -> None:
    old, new = warm_and_new()
    config = SlowStartConfig(window=10.0, aggression=2.0)
    balancer = RoundRobinBalancer(HostSet([old, new]), random.Random(0), config, FakeClock(2.5))
    # (2.5 / 10) ** (1 / 2) = 0.5
    assert abs(share_of(balancer, new) - 0.5 / 1.5) < 0.01


def test_without_health_checks_a_host_warms_up_from_when_it_was_first_seen() -> None:
    clock = FakeClock(0.0)
    old = Host("127.0.0.1", 1)
    host_set = HostSet([old])
    balancer = RoundRobinBalancer(host_set, random.Random(0), WINDOW, clock)
    host_set.subscribe(balancer.hosts_changed)
    clock.now = 20.0  # the first host is warm by now
    new = Host("127.0.0.1", 2)
    host_set.update([old, new])
    assert abs(share_of(balancer, new) - 0.1 / 1.1) < 0.01


def test_least_request_scales_warming_hosts_too() -> None:
    old, new = warm_and_new()
    config = LeastRequestConfig(slow_start=WINDOW)
    balancer = LeastRequestBalancer(HostSet([old, new]), random.Random(0), config, FakeClock(5.0))
    assert abs(share_of(balancer, new) - 0.5 / 1.5) < 0.01
