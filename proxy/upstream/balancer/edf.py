"""Earliest-deadline-first scheduling: Envoy's weighted round robin.

Rules (Envoy's EdfScheduler):
- Every entry has a deadline; a pick takes the entry with the earliest deadline
  (ties: the one inserted first), advances the scheduler's clock to that deadline,
  and re-inserts the entry at `clock + 1 / weight`, with the weight read *at that
  moment* (so least-request can make weight depend on active requests).
- Over any window an entry is picked in proportion to its weight, and picks of the
  different entries interleave smoothly instead of coming in bursts.
- A new scheduler starts as if `picks` picks had already been made (Envoy derives
  `picks` from a random seed), so that proxies restarted together do not all hit
  the same host first. Like Envoy, most of those picks are emulated in O(n) from
  each entry's share of the total weight; fewer than n remain to be made one by one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# Envoy bounds the emulated picks at UINT32_MAX / 10.
_MAX_PICKS = 429496729
# Envoy adds this to every weight while emulating picks so that weights that are
# multiples of each other do not tie by floating-point accident.
_WEIGHT_EPSILON = 1e-13


class EdfScheduler(Generic[T]):
    __slots__ = ("_clock", "_heap", "_order", "_weight_of")

    def __init__(
        self, entries: Sequence[T], weight_of: Callable[[T], float], picks: int = 0
    ) -> None:
        self._weight_of = weight_of
        self._heap: list[tuple[float, int, T]] = []
        self._clock = 0.0
        self._order = 0
        if entries:
            self._start_after(entries, picks % _MAX_PICKS)

    def _start_after(self, entries: Sequence[T], picks: int) -> None:
        weights = [self._weight_of(e) + _WEIGHT_EPSILON for e in entries]
        total = sum(weights)
        done = 0
        latest_pick = 0.0
        for i, (entry, weight) in enumerate(zip(entries, weights, strict=True)):
            floor_picks = int(weight * picks / total)
            # Floating point can round floor(a*b) above a*b; back off by one then.
            if floor_picks > 0 and floor_picks / weight >= picks / total:
                floor_picks -= 1
            latest_pick = max(latest_pick, floor_picks / weight)
            self._heap.append(((floor_picks + 1) / weight, i, entry))
            done += floor_picks
        heapq.heapify(self._heap)
        self._clock = latest_pick
        self._order = len(entries)
        while done < picks:
            self.pick()
            done += 1

    def pick(self) -> T | None:
        """The entry with the earliest deadline, re-inserted at its next deadline."""
        heap = self._heap
        if not heap:
            return None
        deadline, _, entry = heap[0]
        self._clock = deadline
        order = self._order
        self._order = order + 1
        heapq.heapreplace(heap, (deadline + 1.0 / self._weight_of(entry), order, entry))
        return entry

    def __len__(self) -> int:
        return len(self._heap)
