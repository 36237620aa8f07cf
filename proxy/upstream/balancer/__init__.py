"""Load balancers: choose one host of a cluster per request.

Every balancer keeps one precomputed table per priority level of its HostSet
(`HostSet.levels`: each level's healthy hosts, or all of them in panic) and
rebuilds them in `hosts_changed()`, which the HostSet calls after every
membership or health change (make_balancer subscribes it). `choose()` runs once
per request: it draws the level by load share (skipped with one level) and, when
the HostSet is locality-weighted, a locality (see levelled.py), then indexes
precomputed tables, drawing from the injected `random.Random`; each pick from a
level in panic counts in `lb_healthy_panic`.

Policies and their Envoy config messages (fields of `Cluster`):
ROUND_ROBIN (round_robin_lb_config), LEAST_REQUEST (least_request_lb_config),
RANDOM (no config), RING_HASH (ring_hash_lb_config), MAGLEV (maglev_lb_config).
The hash-based policies take `hash_key` (from the route's hash_policy: see
`hash_key_for`, `hash_key_for_header`, `combine_hash_keys`) and `attempt` (n > 0:
a retry that wants another host, as Envoy's chooseHost(hash, attempt)); without a
key they pick with a random one, as Envoy does.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.balancer.hashing import combine_hash_keys, hash_key_for, hash_key_for_header
from proxy.upstream.balancer.least_request import LeastRequestBalancer, LeastRequestConfig
from proxy.upstream.balancer.load_balancing_policy import ChosenPolicy, from_load_balancing_policy
from proxy.upstream.balancer.maglev import MaglevBalancer, MaglevConfig
from proxy.upstream.balancer.random import RandomBalancer
from proxy.upstream.balancer.ring_hash import RingHashBalancer, RingHashConfig
from proxy.upstream.balancer.round_robin import RoundRobinBalancer
from proxy.upstream.balancer.slow_start import SlowStartConfig
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet

__all__ = [
    "Balancer",
    "ChosenPolicy",
    "LeastRequestBalancer",
    "LeastRequestConfig",
    "MaglevBalancer",
    "MaglevConfig",
    "RandomBalancer",
    "RingHashBalancer",
    "RingHashConfig",
    "RoundRobinBalancer",
    "SlowStartConfig",
    "combine_hash_keys",
    "from_load_balancing_policy",
    "hash_key_for",
    "hash_key_for_header",
    "make_balancer",
]


class Balancer(Protocol):
    lb_healthy_panic: int  # requests balanced over a priority level in panic (Envoy's stat)

    def choose(self, hash_key: int | None = None) -> Host | None: ...

    def hosts_changed(self) -> None: ...


POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")


def make_balancer(
    policy: str,
    host_set: HostSet,
    config: Any | None,
    rng: random.Random,
    clock: Callable[[], float] = time.monotonic,
    config_path: str | None = None,
) -> Balancer:
    """The balancer for `policy` over `host_set`, subscribed to its changes.

    `config` is the policy's sub-message of the Cluster (or None); its path in
    errors is `config_path`, by default the Cluster field name, e.g.
    "least_request_lb_config.choice_count" (see load_balancing_policy.py for the
    typed-extension form). `clock` (monotonic seconds, the event loop's clock) is
    read only for slow start.
    """
    balancer: Balancer
    if policy == "ROUND_ROBIN":
        path = config_path or "round_robin_lb_config"
        slow_start = None
        if config is not None:
            reject_unsupported(config, path, ("slow_start_config",))
            if config.HasField("slow_start_config"):
                slow_start = SlowStartConfig.from_proto(config.slow_start_config, f"{path}.slow_start_config")
        balancer = RoundRobinBalancer(host_set, rng, slow_start, clock)
    elif policy == "LEAST_REQUEST":
        config_ = LeastRequestConfig.from_proto(config, config_path or "least_request_lb_config")
        balancer = LeastRequestBalancer(host_set, rng, config_, clock)
    elif policy == "RANDOM":
        if config is not None:
            reject_unsupported(config, config_path or "random", ())
        balancer = RandomBalancer(host_set, rng)
    elif policy == "RING_HASH":
        balancer = RingHashBalancer(host_set, rng, RingHashConfig.from_proto(config, config_path or "ring_hash_lb_config"))
    elif policy == "MAGLEV":
        balancer = MaglevBalancer(host_set, rng, MaglevConfig.from_proto(config, config_path or "maglev_lb_config"))
    else:
        raise ConfigError("lb_policy", f"{policy} is not supported (supported: {', '.join(POLICIES)})")
    host_set.subscribe(balancer.hosts_changed)
    return balancer
