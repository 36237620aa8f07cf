"""`Cluster.load_balancing_policy`: the typed-extension way of naming a balancer.

Rules (Envoy): `policies` lists typed extension configs in order of preference;
the first one this proxy supports is used. Supported: the round_robin,
least_request, random, ring_hash and maglev policies
(envoy.extensions.load_balancing_policies.*.v3), with the same fields as the
legacy `lb_policy` + `*_lb_config` form. `from_load_balancing_policy` turns the
chosen one into that legacy form for `make_balancer`, keeping the error path of
the typed config. Fields without a legacy equivalent (locality settings, bounded
loads, hostname hashing, full scan) are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster, LoadBalancingPolicy
from envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2 import LeastRequest
from envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2 import Maglev
from envoy.extensions.load_balancing_policies.random.v3.random_pb2 import Random
from envoy.extensions.load_balancing_policies.ring_hash.v3.ring_hash_pb2 import RingHash
from envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2 import RoundRobin

from proxy.config_error import ConfigError, reject_unsupported


@dataclass(frozen=True, slots=True)
class ChosenPolicy:
    policy: str  # as make_balancer names it
    config: Any | None  # the legacy Cluster.*LbConfig message, or None
    config_path: str  # where the typed config was, for errors


def _type_name(type_url: str) -> str:
    return type_url.rpartition("/")[2]


def _round_robin(typed: RoundRobin, path: str) -> ChosenPolicy:
    reject_unsupported(typed, path, ("slow_start_config",))
    config = Cluster.RoundRobinLbConfig()
    if typed.HasField("slow_start_config"):
        config.slow_start_config.CopyFrom(typed.slow_start_config)
    return ChosenPolicy("ROUND_ROBIN", config, path)


def _least_request(typed: LeastRequest, path: str) -> ChosenPolicy:
    reject_unsupported(typed, path, ("choice_count", "active_request_bias", "slow_start_config"))
    config = Cluster.LeastRequestLbConfig()
    for name in ("choice_count", "active_request_bias", "slow_start_config"):
        if typed.HasField(name):
            getattr(config, name).CopyFrom(getattr(typed, name))
    return ChosenPolicy("LEAST_REQUEST", config, path)


def _random(typed: Random, path: str) -> ChosenPolicy:
    reject_unsupported(typed, path, ())
    return ChosenPolicy("RANDOM", None, path)


def _ring_hash(typed: RingHash, path: str) -> ChosenPolicy:
    reject_unsupported(typed, path, ("hash_function", "minimum_ring_size", "maximum_ring_size"))
    if typed.hash_function not in (RingHash.DEFAULT_HASH, RingHash.XX_HASH):
        raise ConfigError(f"{path}.hash_function", "only XX_HASH (the default) is supported")
    config = Cluster.RingHashLbConfig()
    for name in ("minimum_ring_size", "maximum_ring_size"):
        if typed.HasField(name):
            getattr(config, name).CopyFrom(getattr(typed, name))
    return ChosenPolicy("RING_HASH", config, path)


def _maglev(typed: Maglev, path: str) -> ChosenPolicy:
    reject_unsupported(typed, path, ("table_size",))
    config = Cluster.MaglevLbConfig()
    if typed.HasField("table_size"):
        config.table_size.CopyFrom(typed.table_size)
    return ChosenPolicy("MAGLEV", config, path)


_SUPPORTED: dict[str, tuple[type[Any], Any]] = {
    RoundRobin.DESCRIPTOR.full_name: (RoundRobin, _round_robin),
    LeastRequest.DESCRIPTOR.full_name: (LeastRequest, _least_request),
    Random.DESCRIPTOR.full_name: (Random, _random),
    RingHash.DESCRIPTOR.full_name: (RingHash, _ring_hash),
    Maglev.DESCRIPTOR.full_name: (Maglev, _maglev),
}


def from_load_balancing_policy(
    message: LoadBalancingPolicy, path: str = "load_balancing_policy"
) -> ChosenPolicy:
    """The first supported policy of `Cluster.load_balancing_policy`."""
    reject_unsupported(message, path, ("policies",))
    names = []
    for i, policy in enumerate(message.policies):
        at = f"{path}.policies[{i}].typed_extension_config"
        extension = policy.typed_extension_config
        name = _type_name(extension.typed_config.type_url)
        names.append(name)
        if name not in _SUPPORTED:
            continue
        kind, convert = _SUPPORTED[name]
        typed = kind()
        if not extension.typed_config.Unpack(typed):
            raise ConfigError(f"{at}.typed_config", f"cannot be decoded as {name}")
        chosen: ChosenPolicy = convert(typed, f"{at}.typed_config")
        return chosen
    raise ConfigError(
        f"{path}.policies",
        f"none of {names or 'the (empty) list'} is supported (supported: {', '.join(sorted(_SUPPORTED))})",
    )
