"""One request on a downstream connection, from its parsed head to the end of its response.

Theory of operation: the downstream parser makes a `Stream` when a request head is complete
(proxy/http/downstream.py); the connection manager and the router keep on it everything they
learn about the request — its route plan, the upstream it went to, the attempt being made —
and the access log reads it at the end. One object per request rather than one per layer
(request, body, stream, route selection): the request path allocates and initialises little.

Rules: a request without a body (the common GET) shares `NO_BODY`, which is complete and
never changes; a request with one gets its own `RequestBody`, filled as the body arrives and
retained for retries up to RETAIN_LIMIT. Header `%COMMAND%` substitutions read a stream
(`downstream_remote`, `downstream_local`, `request_headers`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.http.headers import Headers

if TYPE_CHECKING:
    from proxy.http.client import UpstreamConnection
    from proxy.http.downstream import DownstreamConnection
    from proxy.http.retry import RetryPolicy, RetryState
    from proxy.http.route_plan import RoutePlan
    from proxy.router.route import ForwardAction
    from proxy.router.route_table import RouteSelection
    from proxy.upstream.cluster import Cluster
    from proxy.upstream.host import Host

RETAIN_LIMIT = 1024 * 1024   # request bytes kept for retries (Envoy's per-request buffer limit)


class RequestBody:
    """Request body chunks as they arrive; retained for retries up to RETAIN_LIMIT."""

    __slots__ = ("_waiter", "arrived", "chunks", "done", "failed", "on_done", "overflowed", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done = False
        self.size = 0
        self.overflowed = False
        self.failed = False
        self._waiter: asyncio.Future[None] | None = None
        self.on_done: Callable[[], None] | None = None
        self.arrived = 0.0   # loop time the router last relayed chunks upstream (stream idle timer)

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > RETAIN_LIMIT:
            self.overflowed = True
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()
        if self.on_done is not None:
            self.on_done()

    def fail(self) -> None:
        """The client sent a malformed body: whoever streams it must give up."""
        self.failed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter
        self._waiter = None


NO_BODY = RequestBody()
NO_BODY.done = True


class Stream:
    """One request: its head and body as parsed, and what the connection manager and the
    router decided about it."""

    __slots__ = ("action", "authority", "body", "bytes_sent", "chunked", "cluster", "committed",
                 "conn", "deadline", "details", "downstream_local", "downstream_remote", "expect_continue",
                 "flags", "has_body", "hash_key", "header_names", "headers", "internal", "keep_alive",
                 "method", "number", "per_try", "plan", "policy", "request_headers",
                 "response_headers", "response_mutations", "retry", "retry_statuses", "selection", "service_time", "set_cookie",
                 "start", "status",
                 "target", "timeout", "transport_failure", "tried", "upgrade", "upstream", "upstream_connection",
                 "upstream_target", "version")

    header_names: set[str]    # the names of the client's headers, set by the parser

    # The router's state (set when the request is forwarded, read by its attempts).
    action: ForwardAction
    authority: str
    cluster: Cluster
    deadline: float           # the route timeout's end on the loop clock, 0.0 without one
    hash_key: int | None
    number: int               # the attempt being made, from 1
    per_try: float
    plan: RoutePlan           # set by routing
    policy: RetryPolicy | None
    retry: RetryState | None  # made when a retry is considered, unless made up front
    retry_statuses: frozenset[int]   # without `retry`: the statuses a first attempt retries
    selection: RouteSelection
    start: float              # loop time when the connection manager took the request
    timeout: float
    tried: list[Host]
    upstream_target: str      # the request target as sent upstream (after rewrites)
    # for the access log: the response head as committed (a local reply's headers, or the
    # parts of an upstream head as sent: see access_log's %RESP(..)%), the connection that carried it
    response_headers: Headers | list[bytes]
    upstream_connection: UpstreamConnection
    transport_failure: str    # why the last connect failed (ConnectFailure.reason)
    set_cookie: str           # a generated hash cookie's Set-Cookie (proxy/http/hash_cookie.py)

    def __init__(self, conn: DownstreamConnection, method: str, target: str, version: str,
                 headers: Headers, keep_alive: bool, upgrade: bool) -> None:
        self.conn = conn
        self.method = method
        self.target = target      # as received (the access log's path)
        self.version = version
        self.headers = self.request_headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.body = NO_BODY
        self.chunked = False
        self.has_body = False
        self.expect_continue = False
        self.downstream_remote = conn.peer
        self.downstream_local = conn.local
        self.committed = False
        self.internal = False
        self.response_mutations: tuple = ()
        # for the access log
        self.status = 0
        self.bytes_sent = 0
        self.flags = "-"
        self.details: str | None = None   # response code details the flags do not tell (access log)
        self.upstream = "-"
        self.service_time: str | None = None
