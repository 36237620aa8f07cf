"""RANDOM: Envoy's random load balancer.

Rules (Envoy's RandomLoadBalancer): one uniformly random 64-bit number per pick,
reduced modulo the number of routable hosts. Weights are ignored, as in Envoy.
"""

from __future__ import annotations

import random

from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


class RandomBalancer:
    __slots__ = ("_getrandbits", "_host_set", "_hosts")

    def __init__(self, host_set: HostSet, rng: random.Random) -> None:
        self._host_set = host_set
        self._getrandbits = rng.getrandbits
        self._hosts: tuple[Host, ...] = ()
        self.hosts_changed()

    def hosts_changed(self) -> None:
        self._hosts = self._host_set.routable()

    def choose(self, hash_key: int | None = None) -> Host | None:
        hosts = self._hosts
        if not hosts:
            return None
        return hosts[self._getrandbits(64) % len(hosts)]
