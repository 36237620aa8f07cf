"""ROUND_ROBIN: Envoy's round robin, plain or weighted.

Rules (Envoy's RoundRobinLoadBalancer):
- Per request a priority level is drawn by its load share (HostSet.choose_level);
  within it the routable hosts are the healthy ones, or all in panic. With
  locality-weighted balancing a locality is drawn next (balancer/levelled.py).
- Equal weights: plain rotation over the level's list. The rotation index starts
  at a random seed drawn once per balancer, so a fleet of proxies does not march
  in lock step, and it survives host changes (Envoy keeps one index per source:
  per priority, the healthy list and the full list used in panic).
- Unequal weights, or a host in slow start (balancer/slow_start.py): an EDF scheduler (balancer/edf.py) picks each host in
  proportion to its weight, smoothly interleaved, started after a seeded number of
  emulated picks. The schedulers are rebuilt on every host or health change.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from proxy.upstream.balancer.edf import EdfScheduler
from proxy.upstream.balancer.levelled import SlottedBalancer, Source
from proxy.upstream.balancer.slow_start import SlowStart, SlowStartConfig
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


def host_weight(host: Host) -> float:
    return float(host.weight)


def weights_equal(hosts: tuple[Host, ...]) -> bool:
    if len(hosts) <= 1:
        return True
    first = hosts[0].weight
    return all(h.weight == first for h in hosts)


class _Table:
    __slots__ = ("edf", "hosts", "index", "source")

    def __init__(self, hosts: tuple[Host, ...], edf: EdfScheduler[Host] | None, index: int, source: Source) -> None:
        self.hosts = hosts
        self.edf = edf
        self.index = index
        self.source = source


class RoundRobinBalancer(SlottedBalancer[_Table]):
    __slots__ = ("_getrandbits", "_indexes", "_seed", "_slow_start", "_tables", "_warming")

    def __init__(
        self,
        host_set: HostSet,
        rng: random.Random,
        slow_start: SlowStartConfig | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        seed = rng.getrandbits(64)
        super().__init__(host_set, seed)
        if slow_start is not None and clock is None:
            raise ValueError("slow start needs a clock")
        self._slow_start = SlowStart(slow_start, clock) if slow_start is not None and clock is not None else None
        self._getrandbits = rng.getrandbits
        self._seed = seed
        # Rotation index per source, kept across rebuilds (Envoy keeps one per source).
        self._indexes: dict[Source, int] = {}
        self._tables: list[_Table] = []
        self._warming = False
        self.hosts_changed()

    def _weight(self, host: Host) -> float:
        slow_start = self._slow_start
        if slow_start is not None and slow_start.active():
            return slow_start.weight(host, float(host.weight))
        return float(host.weight)

    def _make_table(self, hosts: tuple[Host, ...], source: Source) -> _Table:
        weighted = len(hosts) > 1 and (self._warming or not weights_equal(hosts))
        weight_of = host_weight if self._slow_start is None else self._weight  # the cheaper one per pick
        edf = EdfScheduler(hosts, weight_of, picks=self._seed & 0xFFFFFFFF) if weighted else None
        table = _Table(hosts, edf, self._indexes.get(source, self._seed), source)
        self._tables.append(table)
        return table

    def hosts_changed(self) -> None:
        for old in self._tables:
            self._indexes[old.source] = old.index
        self._tables = []
        self._warming = False
        if self._slow_start is not None:
            self._slow_start.hosts_seen(self._host_set.hosts)
            self._warming = self._slow_start.active()
        self._rebuild()

    def choose(self, hash_key: int | None = None) -> Host | None:
        table = self._single
        if table is None:
            table = self._slow_table(self._getrandbits(64))
            if table is None:
                return None
        elif self._single_panic:
            self.lb_healthy_panic += 1
        edf = table.edf
        if edf is not None:
            return edf.pick()
        hosts = table.hosts
        if not hosts:
            return None
        index = table.index
        table.index = index + 1
        return hosts[index % len(hosts)]
