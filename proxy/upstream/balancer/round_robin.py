"""ROUND_ROBIN: Envoy's round robin, plain or weighted.

Rules (Envoy's RoundRobinLoadBalancer):
- Hosts come from `HostSet.routable()` (healthy ones, or all of them in panic).
- Equal weights: plain rotation over the list. The rotation index starts at a
  random seed drawn once per balancer, so a fleet of proxies does not march in
  lock step, and it survives host changes (Envoy keeps one index per source:
  the healthy list and, in panic, the full list).
- Unequal weights: an EDF scheduler (balancer/edf.py) picks each host in
  proportion to its weight, smoothly interleaved, started after a seeded number of
  emulated picks. The scheduler is rebuilt on every host or health change.
"""

from __future__ import annotations

import random

from proxy.upstream.balancer.edf import EdfScheduler
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


def host_weight(host: Host) -> float:
    return float(host.weight)


def weights_equal(hosts: tuple[Host, ...]) -> bool:
    if len(hosts) <= 1:
        return True
    first = hosts[0].weight
    return all(h.weight == first for h in hosts)


class RoundRobinBalancer:
    __slots__ = ("_edf", "_host_set", "_hosts", "_in_panic", "_index", "_parked_index", "_seed")

    def __init__(self, host_set: HostSet, rng: random.Random) -> None:
        self._host_set = host_set
        self._seed = rng.getrandbits(64)
        self._index = self._seed
        self._parked_index = self._seed  # the index of the source not in use
        self._in_panic = host_set.in_panic
        self._hosts: tuple[Host, ...] = ()
        self._edf: EdfScheduler[Host] | None = None
        self.hosts_changed()

    def hosts_changed(self) -> None:
        host_set = self._host_set
        if host_set.in_panic != self._in_panic:
            self._index, self._parked_index = self._parked_index, self._index
            self._in_panic = host_set.in_panic
        hosts = host_set.routable()
        self._hosts = hosts
        self._edf = (
            None
            if weights_equal(hosts)
            else EdfScheduler(hosts, host_weight, picks=self._seed & 0xFFFFFFFF)
        )

    def choose(self, hash_key: int | None = None) -> Host | None:
        edf = self._edf
        if edf is not None:
            return edf.pick()
        hosts = self._hosts
        if not hosts:
            return None
        index = self._index
        self._index = index + 1
        return hosts[index % len(hosts)]
