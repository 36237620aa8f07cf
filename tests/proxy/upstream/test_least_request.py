import random
from collections import Counter

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError
from proxy.upstream.balancer.least_request import LeastRequestBalancer, LeastRequestConfig
from proxy.upstream.balancer.slow_start import SlowStartConfig
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts


def test_two_choices_prefer_the_less_loaded_host() -> None:
    hosts = make_hosts(2)
    hosts[0].active_requests = 5
    balancer = LeastRequestBalancer(HostSet(hosts), random.Random(4))
    counts = Counter(balancer.choose() for _ in range(4000))
    # The busy host wins only when both draws land on it: probability 1/4.
    assert abs(counts[hosts[0]] - 1000) < 120
    assert abs(counts[hosts[1]] - 3000) < 120


def test_equal_load_spreads_uniformly() -> None:
    hosts = make_hosts(4)
    balancer = LeastRequestBalancer(HostSet(hosts), random.Random(8))
    counts = Counter(balancer.choose() for _ in range(20_000))
    for host in hosts:
        assert abs(counts[host] - 5000) < 300


def test_more_choices_approach_the_least_loaded() -> None:
    hosts = make_hosts(4)
    for i, host in enumerate(hosts):
        host.active_requests = 10 - i  # hosts[3] is least loaded
    balancer = LeastRequestBalancer(HostSet(hosts), random.Random(8), LeastRequestConfig(choice_count=5))
    counts = Counter(balancer.choose() for _ in range(10_000))
    # P(hosts[3] among 5 draws) = 1 - (3/4)^5 ~ 0.763
    assert abs(counts[hosts[3]] - 7627) < 200


def test_unequal_weights_use_active_request_scaled_edf() -> None:
    hosts = make_hosts(2, weights=[2, 1])
    balancer = LeastRequestBalancer(HostSet(hosts), random.Random(1))
    counts = Counter(balancer.choose() for _ in range(300))
    assert [counts[h] for h in hosts] == [200, 100]


def test_weighted_schedule_backs_off_from_busy_hosts() -> None:
    hosts = make_hosts(2, weights=[2, 1])
    hosts[0].active_requests = 3  # effective weight 2 / 4 = 0.5 vs 1 / 1
    balancer = LeastRequestBalancer(HostSet(hosts), random.Random(1))
    counts = Counter(balancer.choose() for _ in range(300))
    assert counts[hosts[1]] == 200 and counts[hosts[0]] == 100


def test_explicit_bias_forces_weighted_selection() -> None:
    hosts = make_hosts(2)
    hosts[0].active_requests = 1  # weight 1 / 2^2 = 0.25 vs 1
    config = LeastRequestConfig(active_request_bias=2.0, bias_configured=True)
    balancer = LeastRequestBalancer(HostSet(hosts), random.Random(1), config)
    counts = Counter(balancer.choose() for _ in range(500))
    assert counts[hosts[0]] == 100 and counts[hosts[1]] == 400


def test_from_proto_defaults() -> None:
    assert LeastRequestConfig.from_proto(Cluster.LeastRequestLbConfig()) == LeastRequestConfig()


def test_from_proto_reads_choice_count_and_bias() -> None:
    message = Cluster.LeastRequestLbConfig()
    message.choice_count.value = 3
    message.active_request_bias.default_value = 0.5
    message.active_request_bias.runtime_key = ""
    config = LeastRequestConfig.from_proto(message)
    assert config == LeastRequestConfig(choice_count=3, active_request_bias=0.5, bias_configured=True)


def test_from_proto_rejects_choice_count_below_two() -> None:
    message = Cluster.LeastRequestLbConfig()
    message.choice_count.value = 1
    with pytest.raises(ConfigError, match=r"least_request_lb_config\.choice_count"):
        LeastRequestConfig.from_proto(message)


def test_from_proto_reads_slow_start() -> None:
    message = Cluster.LeastRequestLbConfig()
    message.slow_start_config.slow_start_window.seconds = 30
    message.slow_start_config.min_weight_percent.value = 20
    assert LeastRequestConfig.from_proto(message).slow_start == SlowStartConfig(30.0, 1.0, 20.0)


def test_from_proto_requires_the_slow_start_window() -> None:
    message = Cluster.LeastRequestLbConfig()
    message.slow_start_config.min_weight_percent.value = 20
    with pytest.raises(ConfigError, match=r"least_request_lb_config\.slow_start_config\.slow_start_window"):
        LeastRequestConfig.from_proto(message)
