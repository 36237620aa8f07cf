"""What every balancer shares about priority levels: picking a level per request
and counting Envoy's `lb_healthy_panic` (requests balanced over a level in panic).

A balancer keeps one table per level of `HostSet.levels`; with a single level it
skips the level draw altogether (the common case costs one flag test).
"""

from __future__ import annotations

from proxy.upstream.host_set import HostSet


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
