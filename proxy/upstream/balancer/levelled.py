"""What the balancers share about priority levels and localities.

LevelledBalancer: picking a priority level per request (by load share; skipped
with one level) and counting Envoy's `lb_healthy_panic` (picks from a level in
panic). The hash-based balancers use it directly.

SlottedBalancer adds Envoy's locality-weighted balancing for the per-request
balancers (round robin, least request, random): per level it keeps one "slot",
either a single table over the level's routable hosts or, when the HostSet is
locality-weighted and the level is not in panic, an EDF scheduler over the
localities (effective weight = locality weight x min(1, 1.4 x healthy share);
localities at 0 are left out) and one table per locality over its healthy hosts.
A request picks the level, then the locality, then uses that table. With one
level and no localities the balancer reads `_single` directly (one test per pick).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from proxy.upstream.balancer.edf import EdfScheduler
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet, LocalityGroup, PriorityLevel

T = TypeVar("T")

# A table's identity across rebuilds: (priority, in panic) or (priority, locality).
Source = tuple[int, bool | str]


class LevelledBalancer:
    __slots__ = ("_host_set", "_panic_by_level", "_single_panic", "lb_healthy_panic")

    def __init__(self, host_set: HostSet) -> None:
        self._host_set = host_set
        self._panic_by_level: list[bool] = []
        self._single_panic = False
        self.lb_healthy_panic = 0  # Envoy: cluster.NAME.lb_healthy_panic

    def _levels_changed(self) -> None:
        levels = self._host_set.levels
        self._panic_by_level = [level.in_panic for level in levels]
        self._single_panic = len(levels) == 1 and levels[0].in_panic

    def _pick_level(self, value: int) -> int:
        """The level for a request drawn from `value` (random or its hash key)."""
        index = self._host_set.choose_level(value)
        if self._panic_by_level[index]:
            self.lb_healthy_panic += 1
        return index


class _Slot(Generic[T]):
    __slots__ = ("localities", "table", "tables")

    def __init__(self, table: T | None, localities: EdfScheduler[int] | None, tables: list[T]) -> None:
        self.table = table
        self.localities = localities
        self.tables = tables


def weighted_localities(level: PriorityLevel) -> list[LocalityGroup]:
    """The localities a request may go to: none in panic, else those with weight."""
    if level.in_panic:
        return []
    return [group for group in level.localities if group.effective_weight > 0]


class SlottedBalancer(LevelledBalancer, Generic[T]):
    __slots__ = ("_locality_seed", "_single", "_slots")

    def __init__(self, host_set: HostSet, locality_seed: int) -> None:
        super().__init__(host_set)
        self._locality_seed = locality_seed
        self._slots: list[_Slot[T]] = []
        self._single: T | None = None

    def _make_table(self, hosts: tuple[Host, ...], source: Source) -> T:
        raise NotImplementedError

    def _rebuild(self) -> None:
        slots: list[_Slot[T]] = []
        for level in self._host_set.levels:
            groups = weighted_localities(level)
            if groups:
                tables = [self._make_table(g.healthy, (level.priority, g.locality)) for g in groups]
                weights = [g.effective_weight for g in groups]
                scheduler = EdfScheduler(range(len(groups)), weights.__getitem__, picks=self._locality_seed & 0xFFFFFFFF)
                slots.append(_Slot(None, scheduler, tables))
            else:
                slots.append(_Slot(self._make_table(level.routable, (level.priority, level.in_panic)), None, []))
        self._slots = slots
        only = slots[0] if len(slots) == 1 else None
        self._single = only.table if only is not None and only.localities is None else None
        self._levels_changed()

    def _slow_table(self, value: int) -> T | None:
        """The table for a request when `_single` does not apply."""
        slots = self._slots
        if not slots:
            return None
        if len(slots) == 1:
            slot = slots[0]
            if self._single_panic:
                self.lb_healthy_panic += 1
        else:
            slot = slots[self._pick_level(value)]
        localities = slot.localities
        if localities is None:
            return slot.table
        index = localities.pick()
        assert index is not None  # a slot's scheduler is never empty
        return slot.tables[index]
