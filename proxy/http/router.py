"""The router (Envoy's router filter): a routed request's attempts upstream, and the response.

Theory of operation, per request the connection manager routed to a cluster (`forward`):
1. the router's state for the request: the cluster (weighted pick), the retry policy and
   timeouts (the route plan's, overridden by an internal request's x-envoy-* headers), the
   hash key, the route's request header mutations and rewrites;
2. attempts — pick a host (balancer, previous_hosts), hold a circuit-breaker request slot,
   take or open a pooled connection, send, wait for the response head under the per-try and
   route deadlines — and the retry policy decides whether an outcome is returned or retried
   after a jittered back-off. The first attempt of a request whose body is in, on an idle
   pooled connection (the common case), is an `Exchange` driven by the connection's
   callbacks (proxy/http/exchange.py); the coroutine `_forward_attempts` takes over for
   everything that waits (connecting, streaming a request body) or decides (a retry, a
   failure's reply), from the outcome the exchange got;
3. the response head gets Envoy's headers from the connection manager (`commit_head`) and
   the body streams through (`respond`).

Local replies (Envoy's texts): 503 "upstream connect error or disconnect/reset before
headers. reset reason: overflow" with x-envoy-overloaded for circuit breaking, "... reset
reason: remote connection failure" / "connection termination" for connect failures and
resets, 502 "... reset reason: protocol error" when the upstream's answer is not HTTP/1.1,
504 "upstream request timeout" for timeouts, 503 "no healthy upstream" when the
balancer has no host. Before the response head, a per-try timeout, a per-try idle timeout
(both running from the end of the request body) and the cluster's max_stream_duration (from
the attempt's start) end the attempt and are retried as resets are; after
it, the body's own deadlines apply (proxy/http/response_timers.py). When retries are
exhausted the flags say URX first, as Envoy's do ("URX,UC").
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from proxy.http import hash_cookie
from proxy.http.attempt import GLOBAL_TIMEOUT, IDLE_TIMEOUT, UPSTREAM_DURATION, Attempt
from proxy.http.client import CUT_BY_PROTOCOL_ERROR, CUT_BY_TERMINATION, UpstreamConnection
from proxy.http.exchange import Exchange
from proxy.http.headers import Headers
from proxy.http.response import LAST_CHUNK, encode_chunk
from proxy.http.response_timers import (
    DURATION_DETAILS,
    PER_TRY_IDLE_DETAILS,
    body_deadline,
    charge_cut,
)
from proxy.http.retry import (
    CONNECT_FAILURE,
    PER_TRY_IDLE_TIMEOUT,
    PER_TRY_TIMEOUT,
    PROTOCOL_ERROR,
    RESET,
    RetryPolicy,
    RetryState,
    parse_retry_on,
)
from proxy.http.route_plan import expected_timeout
from proxy.http.stream import Stream
from proxy.http.stream_duration import DURATION_TIMEOUT
from proxy.router.matchers import parse_query
from proxy.router.route import ForwardAction, HashPolicy
from proxy.upstream.balancer import combine_hash_keys, hash_key_for
from proxy.upstream.host import Host
from proxy.upstream.pool import ConnectFailure, Overflow

if TYPE_CHECKING:
    from proxy.http.connection_manager import HttpConnectionManager
    from proxy.upstream.cluster import Cluster

OVERFLOW = "overflow"
_CRLF = "\r\n"
_HEADER_LINE = ": ".join   # (name, value) -> "name: value"
_NO_STATUSES: frozenset[int] = frozenset()
RESET_PREFIX = "upstream connect error or disconnect/reset before headers. "
PER_TRY_DETAILS = "upstream_per_try_timeout"
_RESET_REASONS = {CONNECT_FAILURE: "remote connection failure", RESET: "connection termination",
                  PROTOCOL_ERROR: "protocol error"}


class DownstreamGone(Exception):
    """The client went away or sent a malformed body while an attempt was in flight."""


class Router:
    """The router of one connection manager; per-request state lives on the `Stream`."""

    def __init__(self, manager: HttpConnectionManager) -> None:
        self.manager = manager
        self.config = manager.config
        self.clusters = manager.clusters
        self.rng = manager.rng
        self.loop = manager.loop
        self.deadlines = manager.deadlines

    def forward(self, stream: Stream, action: ForwardAction, authority: str,
                names: set[str]) -> bool:
        """The router's per-request state, then the first attempt: an `Exchange` of
        callbacks when an idle connection is at hand and the request body is in (the
        common case), else the coroutine that can wait, stream bodies and retry. `names`:
        the names of the client's headers. True when the request goes on asynchronously,
        False when it was answered here."""
        headers = stream.headers
        cluster_name = action.pick_cluster(self.rng.random()) if action.weighted_clusters else action.cluster
        cluster = self.clusters.get(cluster_name)
        if cluster is None:
            manager = self.manager
            manager.stats.no_cluster += 1
            stream.flags = "NC"
            manager.reply(stream, 503, b"")
            return False
        plan = stream.plan
        policy = plan.policy
        timeout = plan.timeout
        per_try = plan.per_try
        retry = None
        retry_statuses = plan.retry_statuses
        request_plan = plan.request_plan
        delay = plan.deadline_delay
        if stream.internal:   # x-envoy-* request headers override the route's settings
            policy, timeout = _honour_envoy_headers(headers, policy, timeout)
            if plan.stream_timeouts is None or not plan.stream_timeouts.new_timeouts:
                delay = timeout
            per_try = policy.per_try_timeout if policy is not None else 0.0
            retry_statuses = _NO_STATUSES   # (decided by `retry`)
            request_plan = None
            if policy is not None and policy.num_retries > 0:
                retry = RetryState(policy)
                if "retriable-status-codes" in policy.retry_on:
                    extra = headers.get("x-envoy-retriable-status-codes")
                    if extra:
                        retry.extra_status_codes = frozenset(
                            int(code) for code in extra.split(",") if code.strip().isdigit())
        if plan.stream_timeouts is not None:   # gRPC timeouts, max_stream_duration
            own = plan.stream_timeouts.for_request(headers, names)
            if own is not None:
                delay = own
                if not plan.stream_timeouts.new_timeouts:
                    timeout = own
                request_plan = None   # (the plan's deadline and expected timeout are not this one's)
        plain = plan.plain
        stream.hash_key = _hash_key(action.hash_policy, stream) if not plain and action.hash_policy else None
        if request_plan is not None:   # the common case: the route's lines in one step
            if not names.isdisjoint(request_plan.drop):
                headers.remove_all(request_plan.drop)
            headers.items += request_plan.lines
        else:
            for mutation in plan.request_mutations:
                mutation.apply(headers, stream)
        target = stream.target if plain else _rewrite(stream, action, authority)
        if stream.chunked:
            headers.set("transfer-encoding", "chunked")
        stream.action = action
        stream.authority = authority
        stream.upstream_target = target
        stream.cluster = cluster
        stream.policy = policy
        stream.retry = retry
        stream.retry_statuses = retry_statuses
        stream.timeout = timeout
        stream.per_try = per_try
        stream.deadline = stream.start + delay if delay > 0 else 0.0
        stream.tried = []
        stream.number = 0
        host = self._begin_attempt(stream, request_plan is None)
        if host is None:
            return False
        pool = cluster.pools.get(host) or cluster.pool(host)   # (a host's pool without a call)
        connection = pool.take_idle() if stream.body.done else None
        if connection is None:
            self.manager.run_async(stream, self._forward_attempts(stream, (host, None)))
            return True
        if request_plan is not None and not cluster.max_stream_duration:   # the plan has the nearest
            delay, kind = plan.first_deadline
            when = stream.start + delay if delay else 0.0
        else:
            when, kind = self._attempt_deadline(stream, stream.start)   # (no time passed since)
        cluster.stats.upstream_rq_total += 1   # (Envoy counts a request once it has a connection)
        Exchange(self, stream, host, pool, connection, request_head(stream.method, target, headers),
                 when, kind)
        return True

    def continue_attempts(self, stream: Stream, host: Host, outcome: Attempt | str) -> None:
        """An exchange's first attempt needs what only the coroutine does (a retry, a reply
        after a failure): it goes on from that attempt's outcome."""
        self.manager.run_async(stream, self._forward_attempts(stream, (host, outcome)))

    def _counted(self, stream: Stream, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        """The router's local replies carry the attempt count too, when asked for."""
        if stream.selection.virtual_host.include_attempt_count_in_response:
            return (*extra, ("x-envoy-attempt-count", str(stream.number)))
        return extra

    def _begin_attempt(self, stream: Stream, attempt_headers: bool = True) -> Host | None:
        """Number the attempt, pick its host and take a request slot from the breaker;
        None when it cannot start (the reply is sent). `attempt_headers`: set the
        attempt's x-envoy-attempt-count and x-envoy-expected-rq-timeout-ms (a first
        attempt under a request plan has them already)."""
        headers = stream.headers
        action = stream.action
        cluster = stream.cluster
        policy = stream.policy
        stream.number = number = stream.number + 1
        if attempt_headers and stream.selection.virtual_host.include_request_attempt_count:
            headers.set("x-envoy-attempt-count", str(number))
        if attempt_headers and not self.config.suppress_envoy_headers:
            plan = stream.plan
            if number == 1 and stream.timeout == plan.timeout and stream.per_try == plan.per_try:
                expected = plan.expected_timeout
            else:
                expected = expected_timeout(stream.timeout, stream.per_try, stream.deadline,
                                            self.loop.time(), number)
            if expected is not None:
                headers.set("x-envoy-expected-rq-timeout-ms", expected)
        tried = stream.tried
        if cluster.original_dst:  # PassthroughCluster: where the client was going
            host: Host | None = cluster.original_destination(stream.conn.local)
        elif tried and policy is not None and policy.previous_hosts:
            host = cluster.choose(stream.hash_key, tried, policy.host_selection_retry_max_attempts)
        else:
            host = cluster.balancer.choose(stream.hash_key)
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            cluster.stats.count_status(503, stream.internal)
            if not cluster.host_set.levels and cluster.host_set.in_panic:
                cluster.balancer.lb_healthy_panic += 1   # (Envoy: a cluster without hosts is in panic)
            stream.flags = "UH"
            self.manager.reply(stream, 503, b"no healthy upstream", extra=self._counted(stream))
            return None
        if action.auto_host_rewrite:
            if number == 1:
                headers.set("x-envoy-original-host", stream.authority)
                if action.append_x_forwarded_host:
                    _append_forwarded_host(headers, stream.authority)
            headers.set("host", cluster.hostnames.get(host, host.address))
        tried.append(host)
        if not cluster.breaker.try_start_request():
            stream.flags = "UO"
            cluster.stats.count_status(503, stream.internal)   # Envoy charges its local replies to the cluster too
            self.manager.reply(stream, 503, RESET_PREFIX.encode() + b"reset reason: overflow",
                               extra=self._counted(stream, ("x-envoy-overloaded", "true")))
            return None
        cluster.stats.upstream_rq_active += 1
        host.active_requests += 1
        return host

    def end_attempt(self, stream: Stream, host: Host) -> None:
        """The attempt's request slot and gauges are given back."""
        cluster = stream.cluster
        cluster.breaker.finish_request()
        cluster.stats.upstream_rq_active -= 1
        host.active_requests -= 1

    def _attempt_deadline(self, stream: Stream, now: float, active: float = 0.0,
                          sent: float | None = 0.0) -> tuple[float, str]:
        """One timer per attempt started at `now`: the nearest of the route's (or stream's)
        duration, per-try, per-try idle, stream idle and the cluster's stream duration
        deadlines (0.0: none); the stream idle one runs from `active`, the latest activity,
        when later. The per-try ones run from `sent`, when the request was wholly sent
        (0.0: at `now`; None: its body is still going out, so they have not started, as in
        Envoy)."""
        plan = stream.plan
        when, kind = stream.deadline, plan.deadline_kind
        duration = plan.stream_duration
        if duration > 0 and (not when or stream.start + duration < when):
            when, kind = stream.start + duration, DURATION_TIMEOUT
        if sent is not None:
            if not sent:
                sent = now
            per_try = stream.per_try
            if per_try > 0 and (not when or sent + per_try < when):
                when, kind = sent + per_try, PER_TRY_TIMEOUT
            policy = stream.policy
            per_try_idle = policy.per_try_idle_timeout if policy is not None else 0.0
            if per_try_idle > 0 and (not when or sent + per_try_idle < when):
                when, kind = sent + per_try_idle, PER_TRY_IDLE_TIMEOUT
        idle = plan.idle
        idle_from = active if active > now else now
        if idle > 0 and (not when or idle_from + idle < when):
            when, kind = idle_from + idle, IDLE_TIMEOUT
        duration = stream.cluster.max_stream_duration
        if duration > 0 and (not when or now + duration < when):
            when, kind = now + duration, UPSTREAM_DURATION
        return when, kind

    async def _forward_attempts(self, stream: Stream, first: tuple[Host, Attempt | str | None]) -> None:
        """Attempts until one outcome is returned: `first` is the attempt already begun
        (its outcome, when an exchange got one)."""
        manager = self.manager
        cluster = stream.cluster
        retry = stream.retry
        policy = stream.policy
        if retry is None and policy is not None and policy.num_retries > 0:
            retry = stream.retry = RetryState(policy)
        cstats = cluster.stats
        next_attempt: tuple[Host, Attempt | str | None] | None = first
        last_failure = ""
        while True:
            if next_attempt is None:
                begun = self._begin_attempt(stream)
                if begun is None:
                    return
                host, outcome = begun, None
            else:
                host, outcome = next_attempt
                next_attempt = None
            number = stream.number
            try:
                if outcome is None:
                    head = request_head(stream.method, stream.upstream_target, stream.headers)
                    outcome = await self._attempt(stream, cluster, host, head)
                if isinstance(outcome, Attempt):
                    status = outcome.status
                    cluster.record_outcome(host, status)
                    if (retry is not None and retry.decide(status) and not stream.body.overflowed
                            and await self._retry_allowed(stream, cluster, retry, stream.deadline)):
                        outcome.abandon()   # (Envoy charges no code for a response it retries)
                    else:
                        cstats.count_status(status, stream.internal)
                        if number > 1:
                            cstats.upstream_rq_retry_success += 1 if status < 500 else 0
                        if retry is not None and retry.exhausted(status):
                            cstats.upstream_rq_retry_limit_exceeded += 1
                            stream.flags = "URX"
                        await self.respond(stream, outcome, number)
                        return
            finally:
                self.end_attempt(stream, host)
            if isinstance(outcome, Attempt):
                # abandoned for a retry (`continue` is here, not in the try: mypyc compiles no
                # continue inside try/finally)
                continue
            if outcome == OVERFLOW:
                stream.flags = "UO"
                cstats.count_status(503, stream.internal)
                manager.reply(stream, 503, RESET_PREFIX.encode() + b"reset reason: overflow",
                              extra=self._counted(stream, ("x-envoy-overloaded", "true")))
                return
            cluster.record_outcome(host, None)
            stream.upstream = host.key
            if outcome == IDLE_TIMEOUT:
                stream.flags = "SI"
                manager.stats.downstream_rq_idle_timeout += 1
                # Envoy: 408 while the request is still arriving, else 504
                manager.reply(stream, 504 if stream.body.done else 408, b"stream timeout",
                              extra=self._counted(stream))
                return
            if outcome == DURATION_TIMEOUT:
                stream.details = DURATION_DETAILS   # (Envoy sets no flag)
                manager.stats.downstream_rq_max_duration_reached += 1
                manager.duration_timeout_reply(stream, self._counted(stream))
                return
            if outcome == GLOBAL_TIMEOUT:
                stream.flags = "UT"
                cstats.upstream_rq_timeout += 1
                cstats.count_status(504, stream.internal)
                host.rq_timeout += 1
                manager.reply(stream, 504, b"upstream request timeout", extra=self._counted(stream))
                return
            if outcome == PER_TRY_TIMEOUT:
                cstats.upstream_rq_per_try_timeout += 1
                host.rq_timeout += 1
            elif outcome == PER_TRY_IDLE_TIMEOUT:
                cstats.upstream_rq_per_try_idle_timeout += 1
                host.rq_timeout += 1
            elif outcome == UPSTREAM_DURATION:
                cstats.upstream_rq_max_duration_reached += 1
            last_failure = outcome
            if (retry is not None and retry.decide(outcome) and not stream.body.overflowed
                    and await self._retry_allowed(stream, cluster, retry, stream.deadline)):
                continue
            # (Envoy's flags: URX, retries exhausted, before the failure's own)
            exhausted = retry is not None and retry.exhausted(outcome)
            if exhausted:
                cstats.upstream_rq_retry_limit_exceeded += 1
            if outcome == UPSTREAM_DURATION:
                stream.flags = "URX,UMSDR" if exhausted else "UMSDR"
                # Envoy: 408 while the request is still arriving, else 504; not a 5xx of the cluster
                manager.reply(stream, 504 if stream.body.done else 408, b"upstream max stream duration reached",
                              extra=self._counted(stream))
                return
            if outcome in (PER_TRY_TIMEOUT, PER_TRY_IDLE_TIMEOUT):
                stream.flags = "URX,UT" if exhausted else "UT"
                stream.details = (PER_TRY_IDLE_DETAILS if outcome == PER_TRY_IDLE_TIMEOUT
                                  else PER_TRY_DETAILS)
                cstats.count_status(504, stream.internal)
                manager.reply(stream, 504, b"upstream request timeout", extra=self._counted(stream))
                return
            retried = "retried and the latest " if number > 1 else ""
            flag = {CONNECT_FAILURE: "UF", PROTOCOL_ERROR: "UPE"}.get(last_failure, "UC")
            stream.flags = f"URX,{flag}" if exhausted else flag
            cstats.count_status(502 if last_failure == PROTOCOL_ERROR else 503, stream.internal)
            body = f"{RESET_PREFIX}{retried}reset reason: {_RESET_REASONS[last_failure]}"
            # Envoy: a protocol error is the upstream's fault (502), other resets are 503.
            manager.reply(stream, 502 if last_failure == PROTOCOL_ERROR else 503, body.encode(),
                          extra=self._counted(stream))
            return

    async def _retry_allowed(self, stream: Stream, cluster: Cluster, retry: RetryState,
                             deadline: float) -> bool:
        """Take a retry slot from the breaker and sleep the back-off (False: give up)."""
        stats = cluster.stats
        if not cluster.breaker.try_start_retry():
            return False
        try:
            stats.upstream_rq_retry += 1
            stats.upstream_rq_retry_backoff_exponential += 1
            delay = retry.backoff(self.rng)
            if deadline and self.loop.time() + delay >= deadline:
                return False
            await asyncio.sleep(delay)
            return not stream.conn.closed
        finally:
            cluster.breaker.finish_retry()

    async def _attempt(self, stream: Stream, cluster: Cluster, host: Host, head: bytes) -> Attempt | str:
        loop = self.loop
        deadline = stream.deadline
        pool = cluster.pool(host)
        connection = pool.take_idle()
        if connection is None:
            try:
                if deadline:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return stream.plan.deadline_kind
                    connection = await asyncio.wait_for(pool.acquire(), remaining)
                else:
                    connection = await pool.acquire()
            except ConnectFailure as failure:
                stream.transport_failure = failure.reason   # (for the access log)
                return CONNECT_FAILURE
            except Overflow:
                return OVERFLOW
            except TimeoutError:
                return stream.plan.deadline_kind
        stream.upstream_connection = connection   # (for the access log)
        cluster.stats.upstream_rq_total += 1
        now = loop.time()
        attempt = Attempt(connection, pool, host, now)
        connection.start(attempt, head)
        body = stream.body
        pump: asyncio.Task[None] | None = None
        if stream.has_body:
            if body.done:
                _write_body(connection, body.chunks, stream.chunked, True)
            else:
                pump = loop.create_task(self._pump_body(stream, connection, attempt))
        when, kind = self._attempt_deadline(stream, now, 0.0, None if pump is not None else 0.0)
        timer = loop.call_at(when, attempt.expire, kind) if when else None
        timed_sent = pump is None   # the timer includes the per-try deadlines
        try:
            while attempt.headers is None and not attempt.reset:
                if attempt.expired is not None:
                    if attempt.expired != IDLE_TIMEOUT or pump is None:
                        break
                    # Envoy restarts the stream idle timer on request body bytes: a body
                    # still arriving moves it on from its latest chunk
                    when, kind = self._attempt_deadline(stream, now, body.arrived, attempt.sent)
                    if when <= loop.time():
                        break
                    attempt.expired = None
                    timed_sent = attempt.sent is not None
                    timer = loop.call_at(when, attempt.expire, kind)
                    continue
                if not timed_sent and attempt.sent is not None:
                    # the body is out: the per-try timers start now
                    timed_sent = True
                    if timer is not None:
                        timer.cancel()
                    when, kind = self._attempt_deadline(stream, now, body.arrived, attempt.sent)
                    timer = loop.call_at(when, attempt.expire, kind) if when else None
                if body.failed or stream.conn.closed:
                    attempt.abandon()
                    raise DownstreamGone()
                await attempt.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if body.failed or stream.conn.closed:   # (woken by the pump's abort, or a 408)
            attempt.abandon()
            raise DownstreamGone()
        if attempt.headers is not None:
            return attempt
        if pump is not None:
            pump.cancel()
        attempt.abandon()
        if attempt.expired is not None:
            return attempt.expired
        return PROTOCOL_ERROR if connection.protocol_error else RESET

    async def _pump_body(self, stream: Stream, connection: UpstreamConnection, attempt: Attempt) -> None:
        body = stream.body
        chunked = stream.chunked
        sent = 0
        while True:
            chunks = body.chunks
            if sent < len(chunks):
                body.arrived = self.loop.time()
                _write_body(connection, chunks[sent:], chunked, False)
                if body.overflowed:
                    chunks.clear()
                    sent = 0
                else:
                    sent = len(chunks)
            if body.done:
                if chunked:
                    connection.write(LAST_CHUNK)
                attempt.request_sent(self.loop.time())
                return
            if body.failed:   # the client's request broke off: so does the upstream's
                connection.abort()
                return
            if connection.closed:
                return
            await body.wait()

    async def respond(self, stream: Stream, attempt: Attempt, attempts: int) -> None:
        """Relay an attempt's response downstream: its head (committed here) and its body,
        in one write when it is all in, else as it arrives under the body's deadlines."""
        conn = stream.conn
        assert attempt.headers is not None
        stream.upstream_connection = attempt.connection   # (for the access log)
        head, keep_alive, chunked, no_body = self.manager.commit_head(
            stream, attempt.status, attempt.headers, attempt.host, attempts)
        loop = self.loop
        upstream = attempt.connection
        if attempt.complete and not chunked:
            # The whole response is here (the common small case): one write, one syscall.
            body = b"".join(attempt.buffer) if attempt.buffer and not no_body else b""
            stream.bytes_sent = len(body)
            conn.write(head + body)
            attempt.finish()
            conn.response_done(keep_alive)
            return
        conn.write(head)
        if no_body and not attempt.complete:
            attempt.abandon()
            conn.response_done(keep_alive)
            return

        def relay(chunk: bytes) -> None:
            attempt.active = loop.time()
            stream.bytes_sent += len(chunk)
            conn.write(encode_chunk(chunk) if chunked else chunk)
            if conn.write_paused:
                upstream.pause_reading()
                conn.on_drain = upstream.resume_reading

        for chunk in attempt.buffer:
            relay(chunk)
        attempt.buffer.clear()
        attempt.writer = relay
        # the body's deadlines (proxy/http/response_timers.py): the idle ones run from the
        # latest chunk, noted by the relay, and are filed anew when they come after progress
        attempt.active = loop.time()
        when, kind = body_deadline(stream, attempt.started, attempt.active)
        timer = loop.call_at(when, attempt.expire, kind) if when else None
        try:
            while not attempt.complete and not attempt.reset and not conn.closed:
                if attempt.expired is not None:
                    when, kind = body_deadline(stream, attempt.started, attempt.active)
                    if when <= loop.time():
                        break
                    attempt.expired = None
                    timer = loop.call_at(when, attempt.expire, kind)
                await attempt.wait()
        finally:
            if timer is not None:
                timer.cancel()
            conn.on_drain = None
        if attempt.complete:
            if chunked:
                conn.write(LAST_CHUNK)
            attempt.finish()
            conn.response_done(keep_alive)
            return
        attempt.abandon()
        # Reset or timeout after the head went out: all Envoy can do on HTTP/1.1 is close
        # (after a timeout, as it closes: the delayed close).
        if attempt.expired is not None and not attempt.reset:
            charge_cut(stream, kind, self.manager.stats)
            conn.close()
        elif attempt.reset and upstream.protocol_error:
            stream.flags = "UPE"
            stream.details = CUT_BY_PROTOCOL_ERROR
            conn.abort()
        else:
            stream.flags = "UC"
            if attempt.reset:
                stream.details = CUT_BY_TERMINATION
            conn.abort()
        conn.response_done(False)


def request_head(method: str, target: str, headers: Headers) -> bytes:
    """The request line and header lines, in one format and one encode (a map over the
    header tuples, not a loop in Python)."""
    items = headers.items
    if not items:
        return f"{method} {target} HTTP/1.1\r\n\r\n".encode("latin-1")
    return f"{method} {target} HTTP/1.1\r\n{_CRLF.join(map(_HEADER_LINE, items))}\r\n\r\n".encode("latin-1")


def _write_body(connection: UpstreamConnection, chunks: list[bytes], chunked: bool, last: bool) -> None:
    if chunked:
        data = b"".join(encode_chunk(chunk) for chunk in chunks if chunk)
        connection.write(data + LAST_CHUNK if last else data)
    else:
        connection.write(b"".join(chunks))


def _honour_envoy_headers(headers: Headers, policy: RetryPolicy | None,
                          timeout: float) -> tuple[RetryPolicy | None, float]:
    """x-envoy-* request headers of an internal request override the route's settings."""
    max_retries_header = headers.get("x-envoy-max-retries")
    value = headers.get("x-envoy-upstream-rq-timeout-ms")
    if value is not None and value.isdigit():
        timeout = int(value) / 1000
        headers.remove("x-envoy-upstream-rq-timeout-ms")
    retry_on = headers.get("x-envoy-retry-on")
    for consumed in ("x-envoy-retry-on", "x-envoy-max-retries"):
        headers.remove(consumed)
    if retry_on is not None:
        extra = parse_retry_on(retry_on)
        if extra:
            base = policy or RetryPolicy()
            policy = replace(base, retry_on=base.retry_on | extra)
    max_retries = max_retries_header
    if max_retries is not None and max_retries.isdigit() and policy is not None:
        policy = replace(policy, num_retries=int(max_retries))
    per_try = headers.get("x-envoy-upstream-rq-per-try-timeout-ms")
    if per_try is not None and per_try.isdigit() and policy is not None:
        policy = replace(policy, per_try_timeout=int(per_try) / 1000)
        headers.remove("x-envoy-upstream-rq-per-try-timeout-ms")
    return policy, timeout


def _rewrite(stream: Stream, action: ForwardAction, authority: str) -> str:
    """The route's host_rewrite_literal, and its path rewrite: the target sent upstream."""
    headers = stream.headers
    if action.host_rewrite_literal:
        headers.set("x-envoy-original-host", authority)
        headers.set("host", action.host_rewrite_literal)
        if action.append_x_forwarded_host:
            _append_forwarded_host(headers, authority)
    target = stream.target
    if action.prefix_rewrite is not None or action.regex_rewrite is not None:
        selection = stream.selection
        rewritten = action.rewrite_path(selection.path, selection.query, selection.matched)
        if rewritten is not None:
            headers.set("x-envoy-original-path", target)
            target = rewritten
    return target


def _append_forwarded_host(headers: Headers, host: str) -> None:
    existing = headers.get_joined("x-forwarded-host")
    headers.set("x-forwarded-host", f"{existing},{host}" if existing else host)


def _hash_key(policies: tuple[HashPolicy, ...], stream: Stream) -> int | None:
    key: int | None = None
    headers = stream.headers
    for policy in policies:
        value: str | None
        if policy.kind == "header":
            value = headers.get_joined(policy.name)
            if value is not None and "," in value:
                value = "".join(line for name, line in headers.items if name == policy.name)
        elif policy.kind == "cookie":
            value = _cookie(headers, policy.name)
            if value is None and policy.ttl is not None:
                value = hash_cookie.generate(stream, policy)
        elif policy.kind == "source_ip":
            value = stream.downstream_remote[0] or None
        else:
            value = _query_parameter(stream.target, policy.name)
        if value is not None:
            key = combine_hash_keys(key, hash_key_for(value))
        if policy.terminal and key is not None:
            break
    return key


def _cookie(headers: Headers, name: str) -> str | None:
    for key, value in headers.items:
        if key == "cookie":
            for pair in value.split(";"):
                cookie_name, _, cookie_value = pair.strip().partition("=")
                if cookie_name == name:
                    # Envoy: a quoted value is taken without its quotes
                    if len(cookie_value) >= 2 and cookie_value[0] == cookie_value[-1] == '"':
                        return cookie_value[1:-1]
                    return cookie_value
    return None


def _query_parameter(target: str, name: str) -> str | None:
    _, _, query = target.partition("?")
    return parse_query(query).get(name) if query else None
