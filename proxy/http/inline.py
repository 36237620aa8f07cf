"""Run a request's coroutine without an asyncio Task.

Theory of operation: a Task costs several microseconds per request (allocation, the
all-tasks weak set, a loop callback before the first step) — a tenth of the proxy's CPU per
request. Most of a request's coroutine runs synchronously (local replies never wait at all),
and when it does wait it awaits an asyncio future. `run_inline` steps the coroutine at once,
in the caller's stack; each future it yields gets a done-callback that steps it again with
the future's outcome, exactly as a Task would.

Rules: the coroutine may await futures, tasks and coroutines built on them (asyncio.sleep,
wait_for in 3.11); it must not need `asyncio.current_task()` (no `asyncio.timeout`). When
what it awaits is cancelled — the proxy stopping with requests in flight: asyncio.run
cancels the tasks left, such as a connect under wait_for — CancelledError is thrown into
it, its cleanup runs, and it ends quietly, as a cancelled Task would: a stop is not an
error. Any other exception escaping it is logged, as an unhandled Task exception would be.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("tulle.proxy.http")


def run_inline(coro: Coroutine[Any, Any, None]) -> None:
    _step(coro, None)


def _step(coro: Coroutine[Any, Any, None], error: BaseException | None) -> None:
    try:
        waited = coro.send(None) if error is None else coro.throw(error)
    except StopIteration:
        return
    except asyncio.CancelledError:
        log.debug("request coroutine cancelled")
        return
    except Exception:
        log.exception("request coroutine failed")
        return
    if waited is None:   # a bare `yield` (asyncio.sleep(0)): step again on the next iteration
        asyncio.get_running_loop().call_soon(_step, coro, None)
        return
    waited._asyncio_future_blocking = False
    waited.add_done_callback(lambda future: _resume(coro, future))


def _resume(coro: Coroutine[Any, Any, None], future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        _step(coro, asyncio.CancelledError())
        return
    _step(coro, future.exception())
