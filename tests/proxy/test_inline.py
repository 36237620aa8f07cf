"""run_inline steps a request's coroutine like a Task would, and a cancelled wait (the proxy
stopping with requests in flight) ends it without an error report."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from proxy.http.inline import run_inline


def run_with_loop_errors(scenario: Any) -> list[dict[str, Any]]:
    """Run `scenario(loop)` in a fresh loop; the exception-handler reports it produced."""
    reports: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reports.append(context))
        await scenario(loop)

    asyncio.run(main())
    return reports


def test_a_coroutine_resumes_with_the_result_of_what_it_awaited() -> None:
    seen: list[int] = []

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        future: asyncio.Future[int] = loop.create_future()

        async def work() -> None:
            seen.append(await future)

        run_inline(work())
        future.set_result(7)
        await asyncio.sleep(0)

    assert run_with_loop_errors(scenario) == []
    assert seen == [7]


def test_a_cancelled_wait_ends_the_coroutine_quietly_after_its_cleanup(
        caplog: pytest.LogCaptureFixture) -> None:
    cleaned: list[bool] = []

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(asyncio.sleep(3600))   # e.g. a connect under wait_for

        async def work() -> None:
            try:
                await task
            finally:
                cleaned.append(True)

        run_inline(work())
        await asyncio.sleep(0)
        task.cancel()
        for _ in range(3):
            await asyncio.sleep(0)

    with caplog.at_level(logging.DEBUG, logger="tulle.proxy.http"):
        assert run_with_loop_errors(scenario) == []
    assert cleaned == [True]
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_an_exception_escaping_the_coroutine_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        async def work() -> None:
            raise RuntimeError("boom")

        run_inline(work())

    with caplog.at_level(logging.ERROR, logger="tulle.proxy.http"):
        assert run_with_loop_errors(scenario) == []
    assert [record.message for record in caplog.records] == ["request coroutine failed"]
