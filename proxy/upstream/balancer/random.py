"""RANDOM: Envoy's random load balancer.

Rules (Envoy's RandomLoadBalancer): one uniformly random 64-bit number per pick
chooses the priority level (by load share) and, reduced modulo the number of the
level's routable hosts, the host. Weights are ignored, as in Envoy.
"""

from __future__ import annotations

import random

from proxy.upstream.balancer.levelled import SlottedBalancer, Source
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


class RandomBalancer(SlottedBalancer[tuple[Host, ...]]):
    __slots__ = ("_getrandbits",)

    def __init__(self, host_set: HostSet, rng: random.Random) -> None:
        super().__init__(host_set, rng.getrandbits(64))
        self._getrandbits = rng.getrandbits
        self.hosts_changed()

    def _make_table(self, hosts: tuple[Host, ...], source: Source) -> tuple[Host, ...]:
        return hosts

    def hosts_changed(self) -> None:
        self._rebuild()

    def choose(self, hash_key: int | None = None) -> Host | None:
        value = self._getrandbits(64)
        hosts = self._single
        if hosts is None:
            hosts = self._slow_table(value)
            if hosts is None:
                return None
        elif self._single_panic:
            self.lb_healthy_panic += 1
        if not hosts:
            return None
        return hosts[value % len(hosts)]
