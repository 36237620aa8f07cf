"""Request deadlines on one loop timer: a timing wheel with 10 ms ticks.

Theory of operation: every request carries a deadline (the route timeout, Envoy's default
15 s, or a per-try or idle timeout), and almost every one is cancelled because the response
came first. A loop timer per request costs more than the rest of a deadline's life (uvloop
allocates a handle and starts and stops a libuv timer), so deadlines are grouped by tick:
`add` files a target under the first tick at or after its deadline, `cancel` removes it,
and a single loop timer wakes at the earliest tick that holds deadlines and expires them.

Rules: a deadline never fires early, and fires at most one tick (10 ms) late, plus the
loop's own latency; a target is expired at most once (`expire(kind)`), never after it was
cancelled, even by a target expired in the same tick. A tick whose deadlines are all
cancelled keeps no bucket: an emptied dict keeps its table (~9 KB for the ~300 requests of
a 10 ms tick at 30,000 requests/s) until its tick would come, a route timeout later (15 s
by default), so kept buckets would add megabytes under steady load. Its tick stays in the
heap (once: a deadline filed on it again does not add it twice) and is skipped if it comes
without a bucket.
"""

from __future__ import annotations

import asyncio
from heapq import heappop, heappush
from typing import Protocol

TICKS_PER_SECOND = 100


class Expirable(Protocol):
    def expire(self, kind: str) -> None: ...


class Deadlines:
    __slots__ = ("_buckets", "_loop", "_queued", "_ticks", "_timer", "_timer_tick")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, dict[Expirable, str]] = {}
        self._ticks: list[int] = []   # a heap of the ticks in _buckets (and of emptied ones)
        self._queued: set[int] = set()   # the ticks in that heap, each there once
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick = 0

    def add(self, when: float, target: Expirable, kind: str) -> int:
        """File `target` to expire with `kind` at `when` (loop time); returns its tick, the
        key to cancel it with."""
        tick = int(when * TICKS_PER_SECOND) + 1   # the first tick after `when`
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            if tick not in self._queued:   # (an emptied tick may be in the heap still)
                self._queued.add(tick)
                heappush(self._ticks, tick)
            if self._timer is None or tick < self._timer_tick:
                self._arm(tick)
        bucket[target] = kind
        return tick

    def cancel(self, tick: int, target: Expirable) -> None:
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.pop(target, None)
            if not bucket:
                del self._buckets[tick]

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = self._loop.call_at(tick / TICKS_PER_SECOND, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # The loop clock has millisecond steps: the small bias keeps a tick that is due
        # from reading as the one before it.
        now = int(self._loop.time() * TICKS_PER_SECOND + 1e-6)
        ticks = self._ticks
        buckets = self._buckets
        while ticks and ticks[0] <= now:
            tick = heappop(ticks)
            self._queued.discard(tick)
            bucket = buckets.get(tick)
            if bucket is None:   # every deadline of the tick was cancelled
                continue
            while bucket:   # one by one, still filed: an expiry may cancel another of the tick
                target, kind = bucket.popitem()
                target.expire(kind)
            if buckets.get(tick) is bucket:   # (else emptied by a cancel, and maybe filed anew)
                del buckets[tick]
        if ticks and (self._timer is None or ticks[0] < self._timer_tick):
            self._arm(ticks[0])   # (an expiry may have armed the timer for a later tick)
