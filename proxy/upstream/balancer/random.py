"""RANDOM: Envoy's random load balancer.

Rules (Envoy's RandomLoadBalancer): one uniformly random 64-bit number per pick
chooses the priority level (by load share) and, reduced modulo the number of the
level's routable hosts, the host. Weights are ignored, as in Envoy.
"""

from __future__ import annotations

import random

from proxy.upstream.balancer.levelled import LevelledBalancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


class RandomBalancer(LevelledBalancer):
    __slots__ = ("_getrandbits", "_levels", "_single")

    def __init__(self, host_set: HostSet, rng: random.Random) -> None:
        super().__init__(host_set)
        self._getrandbits = rng.getrandbits
        self._levels: list[tuple[Host, ...]] = []
        self._single: tuple[Host, ...] | None = None
        self.hosts_changed()

    def hosts_changed(self) -> None:
        self._levels = [level.routable for level in self._host_set.levels]
        self._single = self._levels[0] if len(self._levels) == 1 else None
        self._levels_changed()

    def choose(self, hash_key: int | None = None) -> Host | None:
        value = self._getrandbits(64)
        hosts = self._single
        if hosts is None:
            if not self._levels:
                return None
            hosts = self._levels[self._pick_level(value)]
        elif self._single_panic:
            self.lb_healthy_panic += 1
        if not hosts:
            return None
        return hosts[value % len(hosts)]
