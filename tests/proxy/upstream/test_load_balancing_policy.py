import random

import pytest
from envoy.config.cluster.v3.cluster_pb2 import LoadBalancingPolicy
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.client_side_weighted_round_robin_pb2 import (
    ClientSideWeightedRoundRobin,
)
from envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2 import LeastRequest
from envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2 import Maglev
from envoy.extensions.load_balancing_policies.random.v3.random_pb2 import Random
from envoy.extensions.load_balancing_policies.ring_hash.v3.ring_hash_pb2 import RingHash
from envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2 import RoundRobin
from google.protobuf.message import Message

from proxy.config_error import ConfigError
from proxy.upstream.balancer import make_balancer
from proxy.upstream.balancer.load_balancing_policy import from_load_balancing_policy
from proxy.upstream.balancer.ring_hash import RingHashBalancer
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts


def policies(*typed: Message) -> LoadBalancingPolicy:
    message = LoadBalancingPolicy()
    for config in typed:
        policy = message.policies.add()
        policy.typed_extension_config.name = "lb"
        policy.typed_extension_config.typed_config.Pack(config)
    return message


@pytest.mark.parametrize(
    ("typed", "policy"),
    [(RoundRobin(), "ROUND_ROBIN"), (LeastRequest(), "LEAST_REQUEST"), (Random(), "RANDOM"),
     (RingHash(), "RING_HASH"), (Maglev(), "MAGLEV")],
)
def test_each_supported_extension_maps_to_its_policy(typed: Message, policy: str) -> None:
    assert from_load_balancing_policy(policies(typed)).policy == policy


def test_first_supported_policy_wins() -> None:
    chosen = from_load_balancing_policy(policies(ClientSideWeightedRoundRobin(), RingHash(), RoundRobin()))
    assert chosen.policy == "RING_HASH"
    assert chosen.config_path == "load_balancing_policy.policies[1].typed_extension_config.typed_config"


def test_none_supported_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"load_balancing_policy\.policies: none of"):
        from_load_balancing_policy(policies(ClientSideWeightedRoundRobin()))


def test_fields_carry_over_to_the_balancer() -> None:
    typed = RingHash()
    typed.minimum_ring_size.value = 2048
    chosen = from_load_balancing_policy(policies(typed))
    balancer = make_balancer(chosen.policy, HostSet(make_hosts(4)), chosen.config, random.Random(0),
                             config_path=chosen.config_path)
    assert isinstance(balancer, RingHashBalancer) and balancer.ring_size == 2048


def test_errors_name_the_typed_config_path() -> None:
    typed = LeastRequest()
    typed.choice_count.value = 1
    chosen = from_load_balancing_policy(policies(typed))
    with pytest.raises(ConfigError) as info:
        make_balancer(chosen.policy, HostSet([]), chosen.config, random.Random(0), config_path=chosen.config_path)
    assert info.value.path == "load_balancing_policy.policies[0].typed_extension_config.typed_config.choice_count"


def test_unsupported_extension_fields_are_rejected() -> None:
    typed = RingHash()
    typed.use_hostname_for_hashing = True
    with pytest.raises(ConfigError, match=r"typed_config\.use_hostname_for_hashing"):
        from_load_balancing_policy(policies(typed))


def test_murmur_ring_hash_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"typed_config\.hash_function"):
        from_load_balancing_policy(policies(RingHash(hash_function=RingHash.MURMUR_HASH_2)))
