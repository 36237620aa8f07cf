"""Request deadlines on one loop timer: never early, at most a tick late, never after cancel."""

from __future__ import annotations

import asyncio

from proxy.http.deadlines import TICKS_PER_SECOND, Deadlines

TICK = 1 / TICKS_PER_SECOND


class Target:
    def __init__(self, loop: asyncio.AbstractEventLoop, log: list[tuple[str, str, float]], name: str) -> None:
        self.loop = loop
        self.log = log
        self.name = name
        self.on_expire: list[tuple[Deadlines, int, Target]] = []

    def expire(self, kind: str) -> None:
        self.log.append((self.name, kind, self.loop.time()))
        for deadlines, tick, other in self.on_expire:
            deadlines.cancel(tick, other)


def run(scenario: object) -> None:
    asyncio.run(scenario)  # type: ignore[arg-type]


def test_a_deadline_fires_once_not_before_its_time() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        when = loop.time() + 0.03
        deadlines.add(when, Target(loop, log, "a"), "per-try")
        await asyncio.sleep(0.1)
        assert [(name, kind) for name, kind, _ in log] == [("a", "per-try")]
        assert log[0][2] >= when
    run(scenario())


def test_a_cancelled_deadline_never_fires() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        target = Target(loop, log, "a")
        tick = deadlines.add(loop.time() + 0.02, target, "global")
        deadlines.cancel(tick, target)
        await asyncio.sleep(0.06)
        assert log == []
    run(scenario())


def test_an_expiry_that_cancels_another_of_its_tick_wins() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        when = loop.time() + 0.02
        first, second = Target(loop, log, "first"), Target(loop, log, "second")
        first_tick = deadlines.add(when, first, "x")
        second_tick = deadlines.add(when, second, "x")
        first.on_expire.append((deadlines, second_tick, second))
        second.on_expire.append((deadlines, first_tick, first))
        await asyncio.sleep(0.06)
        assert len(log) == 1
    run(scenario())


def test_an_earlier_deadline_added_later_fires_first() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        now = loop.time()
        deadlines.add(now + 0.2, Target(loop, log, "late"), "x")
        deadlines.add(now + 0.02, Target(loop, log, "early"), "x")
        await asyncio.sleep(0.08)
        assert [name for name, _, _ in log] == ["early"]
        await asyncio.sleep(0.2)
        assert [name for name, _, _ in log] == ["early", "late"]
    run(scenario())


def test_a_deadline_added_while_expiring_is_kept() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        later = Target(loop, log, "later")

        class Chaining(Target):
            def expire(self, kind: str) -> None:
                super().expire(kind)
                deadlines.add(loop.time() + 0.03, later, "y")

        deadlines.add(loop.time() + 0.01, Chaining(loop, log, "first"), "x")
        deadlines.add(loop.time() + 0.3, Target(loop, log, "last"), "z")
        await asyncio.sleep(0.15)
        assert [name for name, _, _ in log] == ["first", "later"]
    run(scenario())


def test_a_tick_whose_deadlines_are_all_cancelled_keeps_no_bucket() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        when = loop.time() + 5.0
        first, second = Target(loop, log, "first"), Target(loop, log, "second")
        first_tick = deadlines.add(when, first, "x")
        second_tick = deadlines.add(when, second, "x")
        deadlines.cancel(first_tick, first)
        deadlines.cancel(second_tick, second)
        assert deadlines._buckets == {}   # (the memory a kept empty bucket would hold)
    run(scenario())


def test_a_deadline_filed_again_on_an_emptied_tick_fires_once() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        when = loop.time() + 0.02
        first = Target(loop, log, "first")
        deadlines.cancel(deadlines.add(when, first, "x"), first)
        deadlines.add(when, Target(loop, log, "second"), "x")
        await asyncio.sleep(0.06)
        assert [name for name, _, _ in log] == ["second"]
    run(scenario())


def test_an_expiry_that_empties_its_tick_and_files_on_it_anew_still_fires_the_new_one() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        when = loop.time() + 0.02
        first, second, third = (Target(loop, log, name) for name in ("first", "second", "third"))
        first_tick = deadlines.add(when, first, "x")
        second_tick = deadlines.add(when, second, "x")

        def expire_and_refile(target: Target, other: Target, other_tick: int) -> None:
            original = target.expire

            def expire(kind: str) -> None:
                original(kind)
                deadlines.cancel(other_tick, other)            # the tick's bucket is now empty
                deadlines.add(when, third, "late")             # and filed anew, already due
            target.expire = expire  # type: ignore[method-assign]

        expire_and_refile(first, second, second_tick)
        expire_and_refile(second, first, first_tick)
        await asyncio.sleep(0.06)
        assert len(log) == 2 and log[1][0] == "third"   # (whichever of the two expired first)
    run(scenario())


def test_a_tick_emptied_and_filed_again_is_queued_once() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, str, float]] = []
        deadlines = Deadlines(loop)
        when = loop.time() + 5.0
        for number in range(100):   # one request at a time: each empties the tick
            target = Target(loop, log, str(number))
            deadlines.cancel(deadlines.add(when, target, "x"), target)
        assert len(deadlines._ticks) == 1   # (a heap entry per request would grow with the rate)
    run(scenario())
