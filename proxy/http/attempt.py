"""One attempt of the router: a request sent on one upstream connection, and its response.

Theory of operation: an `Attempt` is the `ResponseSink` of its connection. The router
coroutine waits on `wait()` while the connection delivers events; timers (per-try, idle and
route deadlines) wake the same waiter with `expire`. Response body chunks that arrive before the
router commits to the response are buffered; once committed, `writer` sends them straight
downstream, so a streaming body never accumulates in the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.http.client import RawHeaders, UpstreamConnection, decode_headers
from proxy.http.headers import Headers
from proxy.upstream.host import Host
from proxy.upstream.pool import ConnectionPool

GLOBAL_TIMEOUT = "global-timeout"
IDLE_TIMEOUT = "idle-timeout"
UPSTREAM_DURATION = "upstream-max-stream-duration"   # the cluster's max_stream_duration


class Attempt:
    __slots__ = ("_waiter", "active", "buffer", "complete", "connection", "expired", "headers", "host",
                 "keep_alive", "pool", "reset", "sent", "started", "status", "writer")

    def __init__(self, connection: UpstreamConnection, pool: ConnectionPool, host: Host,
                 started: float) -> None:
        self.connection = connection
        self.pool = pool
        self.host = host
        self.started = started
        self.active = started   # loop time of the latest response chunk relayed (idle timers)
        self.sent: float | None = None   # loop time the router finished streaming the request body
        self.status = 0
        self.headers: Headers | None = None
        self.keep_alive = False
        self.buffer: list[bytes] = []
        self.complete = False
        self.reset = False
        self.expired: str | None = None
        self.writer: Callable[[bytes], None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    # ResponseSink

    def on_response_headers(self, status: int, headers: RawHeaders, keep_alive: bool) -> None:
        self.status = status
        self.headers = decode_headers(headers)
        self.keep_alive = keep_alive
        self._wake()

    def on_response_body(self, chunk: bytes) -> None:
        writer = self.writer
        if writer is not None:
            writer(chunk)
        else:
            self.buffer.append(chunk)

    def on_response_complete(self) -> None:
        self.complete = True
        self._wake()

    def on_upstream_reset(self) -> None:
        self.reset = True
        self._wake()

    def on_read_end(self) -> None:
        pass   # the router coroutine runs after the read anyway

    def request_sent(self, when: float) -> None:
        """The request body streamed by the router has all gone out (the per-try timers start)."""
        self.sent = when
        self._wake()

    # timers

    def expire(self, kind: str) -> None:
        if self.expired is None:
            self.expired = kind
        self._wake()

    async def wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abandon(self) -> None:
        """Stop this attempt: its connection cannot carry anything else."""
        self.connection.abort()

    def finish(self) -> None:
        """The response completed: the connection goes back to the pool if reusable."""
        self.pool.release(self.connection)
