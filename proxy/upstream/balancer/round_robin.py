"""ROUND_ROBIN: Envoy's round robin, plain or weighted.

Rules (Envoy's RoundRobinLoadBalancer):
- Per request a priority level is drawn by its load share (HostSet.choose_level);
  within it the routable hosts are the healthy ones, or all in panic.
- Equal weights: plain rotation over the level's list. The rotation index starts
  at a random seed drawn once per balancer, so a fleet of proxies does not march
  in lock step, and it survives host changes (Envoy keeps one index per source:
  per priority, the healthy list and the full list used in panic).
- Unequal weights: an EDF scheduler (balancer/edf.py) picks each host in
  proportion to its weight, smoothly interleaved, started after a seeded number of
  emulated picks. The schedulers are rebuilt on every host or health change.
"""

from __future__ import annotations

import random

from proxy.upstream.balancer.edf import EdfScheduler
from proxy.upstream.balancer.levelled import LevelledBalancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


def host_weight(host: Host) -> float:
    return float(host.weight)


def weights_equal(hosts: tuple[Host, ...]) -> bool:
    if len(hosts) <= 1:
        return True
    first = hosts[0].weight
    return all(h.weight == first for h in hosts)


class _Level:
    __slots__ = ("edf", "hosts", "index", "source")

    def __init__(self, hosts: tuple[Host, ...], edf: EdfScheduler[Host] | None, index: int, source: tuple[int, bool]) -> None:
        self.hosts = hosts
        self.edf = edf
        self.index = index
        self.source = source


class RoundRobinBalancer(LevelledBalancer):
    __slots__ = ("_getrandbits", "_indexes", "_levels", "_seed", "_single")

    def __init__(self, host_set: HostSet, rng: random.Random) -> None:
        super().__init__(host_set)
        self._getrandbits = rng.getrandbits
        self._seed = rng.getrandbits(64)
        # Rotation index per source (priority, in panic), kept across rebuilds.
        self._indexes: dict[tuple[int, bool], int] = {}
        self._levels: list[_Level] = []
        self._single: _Level | None = None
        self.hosts_changed()

    def hosts_changed(self) -> None:
        for old in self._levels:
            self._indexes[old.source] = old.index
        levels = []
        for level in self._host_set.levels:
            hosts = level.routable
            source = (level.priority, level.in_panic)
            edf = None if weights_equal(hosts) else EdfScheduler(hosts, host_weight, picks=self._seed & 0xFFFFFFFF)
            levels.append(_Level(hosts, edf, self._indexes.get(source, self._seed), source))
        self._levels = levels
        self._single = levels[0] if len(levels) == 1 else None
        self._levels_changed()

    def choose(self, hash_key: int | None = None) -> Host | None:
        level = self._single
        if level is None:
            if not self._levels:
                return None
            level = self._levels[self._pick_level(self._getrandbits(64))]
        elif self._single_panic:
            self.lb_healthy_panic += 1
        edf = level.edf
        if edf is not None:
            return edf.pick()
        hosts = level.hosts
        if not hosts:
            return None
        index = level.index
        level.index = index + 1
        return hosts[index % len(hosts)]
