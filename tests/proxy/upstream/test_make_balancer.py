import random

import pytest
import xxhash
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError
from proxy.upstream.balancer import hash_key_for, hash_key_for_header, make_balancer
from proxy.upstream.balancer.least_request import LeastRequestBalancer
from proxy.upstream.balancer.random import RandomBalancer
from proxy.upstream.balancer.round_robin import RoundRobinBalancer
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts


@pytest.mark.parametrize(
    ("policy", "kind"),
    [("ROUND_ROBIN", RoundRobinBalancer), ("LEAST_REQUEST", LeastRequestBalancer), ("RANDOM", RandomBalancer)],
)
def test_policy_names_map_to_balancers(policy: str, kind: type) -> None:
    assert isinstance(make_balancer(policy, HostSet(make_hosts(2)), None, random.Random(0)), kind)


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lb_policy"):
        make_balancer("CLUSTER_PROVIDED", HostSet([]), None, random.Random(0))


def test_round_robin_slow_start_window_must_be_positive() -> None:
    config = Cluster.RoundRobinLbConfig()
    config.slow_start_config.slow_start_window.seconds = -3
    with pytest.raises(ConfigError, match=r"round_robin_lb_config\.slow_start_config\.slow_start_window"):
        make_balancer("ROUND_ROBIN", HostSet([]), config, random.Random(0))


def test_round_robin_rejects_unknown_config_fields() -> None:
    config = Cluster.RoundRobinLbConfig()
    config.slow_start_config.slow_start_window.seconds = 3
    config.slow_start_config.aggression.runtime_key = "k"
    config.slow_start_config.aggression.default_value = 0
    with pytest.raises(ConfigError, match=r"aggression\.default_value"):
        make_balancer("ROUND_ROBIN", HostSet([]), config, random.Random(0))


def test_balancer_follows_host_set_changes_without_help() -> None:
    hosts = make_hosts(3)
    host_set = HostSet(hosts)
    balancer = make_balancer("ROUND_ROBIN", host_set, None, random.Random(0))
    hosts[1].outlier_ejected = True
    host_set.health_changed()
    assert hosts[1] not in {balancer.choose() for _ in range(9)}


def test_hash_key_is_xxhash64_seed_zero() -> None:
    assert hash_key_for("user-42") == xxhash.xxh64_intdigest(b"user-42", seed=0)
    assert hash_key_for(b"user-42") == hash_key_for("user-42")


def test_header_hash_of_one_value_is_the_plain_hash() -> None:
    assert hash_key_for_header(["user-42"]) == hash_key_for("user-42")


def test_header_hash_ignores_value_order() -> None:
    assert hash_key_for_header(["b", "a"]) == hash_key_for_header([b"a", b"b"])
    assert hash_key_for_header(["a", "b"]) != hash_key_for("ab")


ALL_POLICIES = ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"]


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_picks_in_panic_are_counted(policy: str) -> None:
    hosts = make_hosts(4)
    for host in hosts[:3]:
        host.health_check_failed = True
    balancer = make_balancer(policy, HostSet(hosts), None, random.Random(0))
    for i in range(10):
        assert balancer.choose(hash_key_for(str(i))) is not None
    assert balancer.lb_healthy_panic == 10


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_picks_outside_panic_are_not_counted(policy: str) -> None:
    balancer = make_balancer(policy, HostSet(make_hosts(4)), None, random.Random(0))
    for i in range(10):
        balancer.choose(hash_key_for(str(i)))
    assert balancer.lb_healthy_panic == 0


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_only_picks_from_the_panicking_level_are_counted(policy: str) -> None:
    p0, p1 = make_hosts(10), make_hosts(2, base_port=9000)
    for host in p1:
        host.locality_priority = 1
    for host in p0[:8]:
        host.health_check_failed = True  # P0 in panic (29% of load), P1 not
    p1[0].health_check_failed = True
    balancer = make_balancer(policy, HostSet(p0 + p1), None, random.Random(0))
    picks = [balancer.choose(hash_key_for(str(i))) for i in range(2000)]
    at_p0 = sum(1 for h in picks if h is not None and h.locality_priority == 0)
    assert balancer.lb_healthy_panic == at_p0
    assert 450 < at_p0 < 710
