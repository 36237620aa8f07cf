"""The router's first attempt as callbacks: one request, one pooled connection, one response.

Theory of operation: most requests are a head (and perhaps a small body already received)
sent on an idle keep-alive connection, answered by a small response that arrives in one
read. For them, waiting in a coroutine costs more than the rest of the router (a future per
wake-up, a loop iteration per resume), so an `Exchange` is the connection's `ResponseSink`
and drives the attempt from the connection's own callbacks:

- made, it files one deadline (the nearest of the route, per-try and stream idle deadlines,
  on the connection manager's timing wheel, proxy/http/deadlines.py) and writes the request;
- `on_response_headers` (the upstream's raw header lines): a status the retry policy
  retries is handed, as an `Attempt` that keeps receiving the response, to the router's
  coroutine (proxy/http/router.py), which decides on the retry (breaker, back-off) exactly as for any
  later attempt; otherwise the head is built (commit) and held;
- the body is buffered until the response completes or the read ends (`on_read_end`):
  complete, head and body go out in one write; still open, the head and what came so far
  go out and the rest is relayed as it arrives, under the body's deadlines (route, stream
  and cluster durations, stream and per-try idle: proxy/http/response_timers.py), with the
  downstream's back-pressure pausing the upstream read;
- a reset or a timeout before the head is committed goes to the coroutine as the attempt's
  outcome (it replies or retries); after it, the client connection is closed, as Envoy
  must on HTTP/1.1.

Rules: whoever finishes the request calls the router's `end_attempt` once (unless the
coroutine took the attempt over) and the connection manager's `end_stream` once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.http.attempt import Attempt
from proxy.http.client import (
    CUT_BY_PROTOCOL_ERROR,
    CUT_BY_TERMINATION,
    RawHeaders,
    UpstreamConnection,
)
from proxy.http.response import LAST_CHUNK, encode_chunk
from proxy.http.response_timers import body_deadline, charge_cut
from proxy.http.retry import PROTOCOL_ERROR, RESET
from proxy.upstream.host import Host
from proxy.upstream.pool import ConnectionPool

if TYPE_CHECKING:
    from proxy.http.router import Router
    from proxy.http.stream import Stream


class Exchange:
    __slots__ = ("active", "body", "chunked", "connection", "head", "host", "keep_alive", "no_body", "pool",
                 "router", "stream", "streaming", "tick")

    def __init__(self, router: Router, stream: Stream, host: Host, pool: ConnectionPool,
                 connection: UpstreamConnection, head: bytes, when: float, kind: str) -> None:
        """Send the request `head` (its body is complete) with a deadline of `kind` at `when`
        (0.0: none)."""
        self.router = router
        self.stream = stream
        self.host = host
        self.pool = pool
        self.connection = connection
        self.head: bytes | None = None   # the committed response head, until written
        self.body: list[bytes] = []
        self.keep_alive = False
        self.chunked = False
        self.no_body = False
        self.streaming = False
        self.active = 0.0   # loop time of the latest chunk relayed, once streaming (idle timers)
        # the deadline's key in the router's Deadlines (0: none)
        self.tick = router.deadlines.add(when, self, kind) if when else 0
        connection.start(self, head)
        if stream.has_body:
            chunks = stream.body.chunks
            if stream.chunked:
                connection.write(b"".join([encode_chunk(chunk) for chunk in chunks if chunk])
                                 + LAST_CHUNK)
            else:
                connection.write(b"".join(chunks))

    # ResponseSink

    def on_response_headers(self, status: int, headers: RawHeaders, keep_alive: bool) -> None:
        stream = self.stream
        retry = stream.retry
        if ((status in stream.retry_statuses if retry is None else retry.decide(status))
                and not stream.body.overflowed):
            # (a first attempt starts as the stream does)
            attempt = Attempt(self.connection, self.pool, self.host, stream.start)
            attempt.on_response_headers(status, headers, keep_alive)
            self.connection.sink = attempt   # the rest of this response goes to the attempt
            self._hand_over(attempt)
            return
        if stream.conn.closed:   # the client left while the upstream worked
            self._cancel_deadline()
            self.connection.abort()
            self._finish(False)
            return
        cluster = stream.cluster
        cstats = cluster.stats
        # ClusterStats.count_status without its call (the path of almost every response)
        codes = cstats.internal_codes if stream.internal else cstats.external_codes
        if codes:
            codes[status] += 1
        else:
            cstats.count_status(status, stream.internal)
        if cluster.outlier is not None:
            cluster.record_outcome(self.host, status)
        else:   # record_outcome's host counters (admin /clusters), without its call
            host = self.host
            if status < 500:
                host.rq_success += 1
            else:
                host.rq_error += 1
        stream.upstream_connection = self.connection   # (for the access log)
        self.head, self.keep_alive, self.chunked, self.no_body = self.router.manager.commit_raw_head(
            stream, status, headers, self.host)

    def on_response_body(self, chunk: bytes) -> None:
        if self.streaming:
            self._relay(chunk)
        else:
            self.body.append(chunk)

    def on_response_complete(self) -> None:
        if self.tick:
            self.router.deadlines.cancel(self.tick, self)
            self.tick = 0
        stream = self.stream
        conn = stream.conn
        if self.streaming:
            conn.on_drain = None
            if self.chunked:
                conn.write(LAST_CHUNK)
        else:
            head = self.head
            assert head is not None
            body = b"".join(self.body) if self.body and not self.no_body else b""
            stream.bytes_sent = len(body)
            if self.chunked:
                conn.write(head + (encode_chunk(body) if body else b"") + LAST_CHUNK)
            else:
                conn.write(head + body)
        self.pool.release(self.connection)
        # _finish, without its call (the path of almost every request)
        router = self.router
        router.end_attempt(stream, self.host)
        conn.response_done(self.keep_alive)
        router.manager.end_stream(stream)

    def on_read_end(self) -> None:
        """The connection parsed all it read: a committed head still held goes out now."""
        head = self.head
        if head is None or self.streaming:
            return
        conn = self.stream.conn
        conn.write(head)
        if self.no_body:   # the upstream's framing promised a body the request forbids
            self._cancel_deadline()
            self.connection.abort()
            self._finish(self.keep_alive)
            return
        self.streaming = True
        for chunk in self.body:
            self._relay(chunk)
        self.body.clear()
        self._cancel_deadline()
        self.active = now = self.router.loop.time()
        # (a first attempt starts as the stream does)
        when, kind = body_deadline(self.stream, self.stream.start, now)
        if when:
            self.tick = self.router.deadlines.add(when, self, kind)

    def on_upstream_reset(self) -> None:
        head = self.head
        if head is None:
            self._hand_over(PROTOCOL_ERROR if self.connection.protocol_error else RESET)
            return
        if not self.streaming:   # a committed head still held goes out first, as Envoy's does
            self.streaming = True
            self.stream.conn.write(head)
            if not self.no_body:
                for chunk in self.body:
                    self._relay(chunk)
            self.body.clear()
        if self.connection.protocol_error:
            self.stream.flags = "UPE"
            self.stream.details = CUT_BY_PROTOCOL_ERROR
            self._fail_downstream()
        else:
            self.stream.flags = "UC"
            self.stream.details = CUT_BY_TERMINATION
            self._fail_downstream()

    def expire(self, kind: str) -> None:
        self.tick = 0
        if self.head is None:
            self.connection.abort()
            self._hand_over(kind)
            return
        stream = self.stream
        router = self.router
        if self.streaming:   # an idle deadline moves on from the latest chunk
            when, kind = body_deadline(stream, stream.start, self.active)
            if when > router.loop.time():
                self.tick = router.deadlines.add(when, self, kind)
                return
        charge_cut(stream, kind, router.manager.stats)
        self._fail_downstream(timed_out=True)

    # the end of the exchange

    def _relay(self, chunk: bytes) -> None:
        self.active = self.router.loop.time()
        conn = self.stream.conn
        self.stream.bytes_sent += len(chunk)
        conn.write(encode_chunk(chunk) if self.chunked else chunk)
        if conn.write_paused:
            self.connection.pause_reading()
            conn.on_drain = self.connection.resume_reading

    def _hand_over(self, outcome: Attempt | str) -> None:
        self._cancel_deadline()
        self.router.continue_attempts(self.stream, self.host, outcome)

    def _fail_downstream(self, timed_out: bool = False) -> None:
        """Reset or timeout after the head went out: all HTTP/1.1 can do is close (after a
        timeout, as Envoy closes: what was written goes out, then the delayed close)."""
        self._cancel_deadline()
        conn = self.stream.conn
        conn.on_drain = None
        self.connection.abort()
        if timed_out:
            conn.close()
        else:
            conn.abort()
        self._finish(False)

    def _finish(self, keep_alive: bool) -> None:
        router = self.router
        stream = self.stream
        router.end_attempt(stream, self.host)
        stream.conn.response_done(keep_alive)
        router.manager.end_stream(stream)

    def _cancel_deadline(self) -> None:
        if self.tick:
            self.router.deadlines.cancel(self.tick, self)
            self.tick = 0
