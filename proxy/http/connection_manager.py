"""The HTTP connection manager and its router: from a parsed request to a response.

Theory of operation, per request (`serve`, synchronous up to the first attempt):
1. connection-manager rules on the request headers (Envoy's mutateRequestHeaders):
   hop-by-hop headers go; with `use_remote_address` the peer (or, for a loopback peer, the
   host's first non-loopback address) is appended to x-forwarded-for, x-forwarded-proto is
   overwritten and the request is external unless the peer is in `internal_address_config`
   (Envoy 1.40 treats no address as internal by default); an external request loses the
   x-envoy-* control headers, an edge one gets x-envoy-external-address and a fresh
   x-request-id; a missing x-request-id is generated;
2. routing (proxy/router/route_table.py): no route → 404 with an empty body; direct
   responses and redirects are answered here;
3. the router: header mutations and rewrites, then attempts — pick a host (balancer,
   previous_hosts), hold a circuit-breaker request slot, take or open a pooled connection,
   send, wait for the response head under the per-try and route deadlines — and the retry
   policy decides whether an outcome is returned or retried after a jittered back-off.
   The first attempt of a request whose body is in, on an idle pooled connection (the
   common case), is an `Exchange` driven by the connection's callbacks
   (proxy/http/exchange.py); the coroutine `_forward_attempts` takes over for everything
   that waits (connecting, streaming a request body) or decides (a retry, a failure's
   reply), from the outcome the exchange got;
4. the response head gets Envoy's headers (x-envoy-upstream-service-time, server, date,
   the route's response mutations) and the body streams through.

Local replies (Envoy's texts): 503 "upstream connect error or disconnect/reset before
headers. reset reason: overflow" with x-envoy-overloaded for circuit breaking, "... reset
reason: remote connection failure" / "connection termination" for connect failures and
resets, 502 "... reset reason: protocol error" when the upstream's answer is not HTTP/1.1,
504 "upstream request timeout" for timeouts, 503 "no healthy upstream" when the
balancer has no host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.access_log import AccessLogWriter, AccessRecord
from proxy.http import tunnel
from proxy.http.attempt import GLOBAL_TIMEOUT, IDLE_TIMEOUT, Attempt
from proxy.http.client import RawHeaders, UpstreamConnection, decode_headers
from proxy.http.deadlines import Deadlines
from proxy.http.downstream import DownstreamConnection, Request
from proxy.http.exchange import Exchange
from proxy.http.hcm_config import HcmConfig
from proxy.http.headers import Headers
from proxy.http.inline import run_inline
from proxy.http.response import (
    LAST_CHUNK,
    date_line,
    encode_chunk,
    encode_head,
    http_date,
    status_line,
)
from proxy.http.response_plan import compile_response_plan
from proxy.http.retry import (
    CONNECT_FAILURE,
    PER_TRY_TIMEOUT,
    PROTOCOL_ERROR,
    RESET,
    RetryPolicy,
    RetryState,
    parse_retry_on,
)
from proxy.rbac import DENIED_BODY, RbacStats, Subject, allowed
from proxy.router.matchers import parse_query
from proxy.router.route import (
    DirectResponseAction,
    ForwardAction,
    HashPolicy,
    RedirectAction,
)
from proxy.router.route_table import RouteSelection, RouteTable
from proxy.stats import HttpStats
from proxy.tls.peer_certificate import forwarded_client_cert
from proxy.upstream.balancer import combine_hash_keys, hash_key_for
from proxy.upstream.host import Host
from proxy.upstream.pool import ConnectFailure, Overflow

OVERFLOW = "overflow"

if TYPE_CHECKING:
    from proxy.upstream.cluster import Cluster

log = logging.getLogger("tulle.proxy.http")

_HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "upgrade"))
_RESPONSE_HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection",
                                  "transfer-encoding", "upgrade"))
_INTERNAL_ONLY = frozenset(("x-envoy-retriable-status-codes", "x-envoy-retriable-header-names",
                  "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
                  "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-timeout-ms",
                  "x-envoy-upstream-rq-per-try-timeout-ms",
                  "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
                  "x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url",
                  "x-envoy-hedge-on-per-try-timeout", "x-envoy-internal"))
_EDGE_ONLY = frozenset(("x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
                        "x-envoy-downstream-service-node"))
_EXTERNAL_REMOVALS = _HOP_BY_HOP | _INTERNAL_ONLY
_EDGE_REMOVALS = _EXTERNAL_REMOVALS | _EDGE_ONLY

# The UUID variant nibble (10xx) for each random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

RESET_PREFIX = "upstream connect error or disconnect/reset before headers. "
_RESET_REASONS = {CONNECT_FAILURE: "remote connection failure", RESET: "connection termination",
                  PROTOCOL_ERROR: "protocol error"}


class Stream:
    """One request's context and the router's state for it; also what header `%COMMAND%`
    substitutions read."""

    __slots__ = ("action", "authority", "bytes_sent", "cluster", "committed", "conn", "deadline",
                 "downstream_local", "downstream_remote", "flags", "hash_key", "idle", "internal",
                 "number", "original_path", "per_try", "plan", "policy", "request", "request_headers",
                 "response_mutations", "retry", "selection", "service_time", "start", "status",
                 "target", "timeout", "tried", "upstream")

    # The router's state (set by the connection manager's _forward, read by its attempts).
    action: ForwardAction
    authority: str
    cluster: Cluster
    deadline: float           # the route timeout's end on the loop clock, 0.0 without one
    hash_key: int | None
    idle: float
    number: int               # the attempt being made, from 1
    per_try: float
    plan: RoutePlan           # set by routing
    policy: RetryPolicy | None
    retry: RetryState | None
    selection: RouteSelection
    target: str               # the request target as sent upstream (after rewrites)
    timeout: float
    tried: list[Host]

    def __init__(self, conn: DownstreamConnection, request: Request, start: float) -> None:
        self.conn = conn
        self.request = request
        self.request_headers = request.headers
        self.downstream_remote = conn.peer
        self.downstream_local = conn.local
        self.start = start
        self.committed = False
        self.internal = False
        self.response_mutations: tuple = ()
        # for the access log
        self.status = 0
        self.bytes_sent = 0
        self.flags = "-"
        self.upstream = "-"
        self.service_time: str | None = None
        self.original_path = request.target


class RoutePlan:
    """What a connection manager works out once per route rather than per request: the
    header mutation levels in application order, the compiled response plan, the retry
    policy (the route's, else the virtual host's) and the timeouts."""

    __slots__ = ("expected_timeout", "idle", "per_try", "policy", "request_mutations",
                 "response_mutations", "response_plan", "route", "table", "timeout")

    def __init__(self, manager: HttpConnectionManager, table: RouteTable,
                 selection: RouteSelection) -> None:
        route = selection.route
        vhost = selection.virtual_host
        self.table = table
        self.route = route
        self.request_mutations = table.request_mutations(selection)
        self.response_mutations = table.response_mutations(selection)
        self.response_plan = compile_response_plan(manager.config, self.response_mutations,
                                                   vhost.include_attempt_count_in_response)
        action = route.action
        if isinstance(action, ForwardAction):
            self.policy = action.retry_policy or vhost.retry_policy
            self.timeout = action.timeout
            self.idle = (action.idle_timeout if action.idle_timeout is not None
                         else manager.config.stream_idle_timeout)
        else:
            self.policy, self.timeout, self.idle = None, 0.0, 0.0
        self.per_try = self.policy.per_try_timeout if self.policy is not None else 0.0
        # x-envoy-expected-rq-timeout-ms of a first attempt under these timeouts
        self.expected_timeout = _expected_timeout(self.timeout, self.per_try, 0.0, 0.0, 1)


class HttpConnectionManager:
    def __init__(self, config: HcmConfig, clusters: dict[str, Cluster], rng: random.Random,
                 local_address: str) -> None:
        self.config = config
        self.route_table = config.route_table   # swapped whole by RDS updates
        self.clusters = clusters
        self.rng = rng
        self.local_address = local_address
        self.stats = HttpStats()
        self.rbac_stats = RbacStats()
        self.draining = False   # the listener was replaced: close connections after their response
        self.connections: set[DownstreamConnection] = set()
        # route plans by route (a plan keeps its route, so the id is not reused)
        self._plans: dict[int, RoutePlan] = {}
        self._loop = self.loop = asyncio.get_event_loop()
        self.deadlines = Deadlines(self._loop)
        self.access_log = AccessLogWriter(config.access_logs) if config.access_logs else None
        if self.access_log is not None:
            self._loop.call_later(1.0, self._flush_access_log)

    def _flush_access_log(self) -> None:
        assert self.access_log is not None
        self.access_log.flush()
        self._loop.call_later(1.0, self._flush_access_log)

    def _log(self, stream: Stream) -> None:
        assert self.access_log is not None
        request = stream.request
        headers = request.headers
        now = self._loop.time()
        self.access_log.write(AccessRecord(
            start=time.time() - (now - stream.start), method=request.method,
            path=headers.get("x-envoy-original-path") or stream.original_path,
            authority=headers.get("host") or "", status=stream.status,
            flags=stream.flags if not stream.conn.closed or stream.committed else "DC",
            bytes_received=request.body.size, bytes_sent=stream.bytes_sent,
            duration_ms=int((now - stream.start) * 1000), service_time=stream.service_time,
            forwarded_for=headers.get_joined("x-forwarded-for"),
            user_agent=headers.get("user-agent"), request_id=headers.get("x-request-id"),
            upstream=stream.upstream))

    # connections

    def connection_opened(self, conn: DownstreamConnection) -> None:
        self.connections.add(conn)
        self.stats.downstream_cx_total += 1
        self.stats.downstream_cx_http1_total += 1
        self.stats.downstream_cx_active += 1

    def connection_closed(self, conn: DownstreamConnection) -> None:
        self.connections.discard(conn)
        self.stats.downstream_cx_active -= 1
        self.stats.downstream_cx_destroy += 1

    def protocol_error_reply(self, conn: DownstreamConnection, status: int) -> None:
        body = {400: b"Bad Request", 426: b"Upgrade Required"}.get(
            status, b"Request Header Fields Too Large")
        self.stats.count_status(status)
        conn.write(self._local_head(status, body, None, close=True) + body)
        conn.close()

    # one request

    def serve(self, conn: DownstreamConnection, request: Request) -> None:
        stats = self.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_http1_total += 1
        stats.downstream_rq_active += 1
        stream = Stream(conn, request, self._loop.time())
        try:
            if self._handle(stream):
                return   # an exchange or a coroutine finishes the stream
        except Exception:
            log.exception("request %s %s failed", request.method, request.target)
            if not stream.committed:
                self._reply(stream, 500, b"", keep_alive=False)
            else:
                conn.abort()
                conn.response_done(False)
        self.end_stream(stream)

    def end_stream(self, stream: Stream) -> None:
        """The request is over (answered, or its client gone): gauges and the access log."""
        stats = self.stats
        stats.downstream_rq_active -= 1
        stats.downstream_rq_completed += 1
        if self.access_log is not None:
            self._log(stream)

    def _run_async(self, stream: Stream, work: Coroutine[Any, Any, None]) -> None:
        """Finish the stream in a coroutine (retries, streamed bodies, upgrades)."""
        run_inline(self._guarded(stream, work))

    async def _guarded(self, stream: Stream, work: Coroutine[Any, Any, None]) -> None:
        request = stream.request
        conn = stream.conn
        try:
            await work
        except _DownstreamGone:
            if request.body.failed and not stream.committed:
                self._reply(stream, 400, b"Bad Request", keep_alive=False)
            else:
                conn.response_done(False)
        except Exception:
            log.exception("request %s %s failed", request.method, request.target)
            if not stream.committed:
                self._reply(stream, 500, b"", keep_alive=False)
            else:
                conn.abort()
                conn.response_done(False)
        finally:
            self.end_stream(stream)

    def _handle(self, stream: Stream) -> bool:
        """Serve the request; True when it goes on asynchronously (whatever finishes it
        calls end_stream), False when it was answered here."""
        request = stream.request
        config = self.config
        headers = request.headers
        if request.version == "1.0" and not config.accept_http_10:
            self._reply(stream, 426, b"Upgrade Required", keep_alive=False)
            return False
        if request.method == "CONNECT" and not tunnel.accept_request(request):
            self._reply(stream, 400, b"Bad Request", keep_alive=False)
            return False
        authority = headers.get("host")
        if authority is None:
            if request.version == "1.0" and config.default_host_for_http_10:
                authority = config.default_host_for_http_10
                headers.add("host", authority)
            else:
                self._reply(stream, 400, b"", keep_alive=False)
                return False
        if request.expect_continue:
            headers.remove("expect")
            if not request.body.done:
                stream.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        upgrade = (("connect" if request.method == "CONNECT" else (headers.get("upgrade") or "").lower())
                   if request.upgrade else "")
        sent_upgrade_headers = tunnel.upgrade_headers(headers) if upgrade else ()
        self._mutate_request_headers(stream)
        if "x-forwarded-client-cert" in headers:   # SANITIZE and SANITIZE_SET both drop it
            headers.remove("x-forwarded-client-cert")
        if config.forward_client_cert == "SANITIZE_SET":
            peer = stream.conn.tls_peer()
            if peer is not None:
                headers.add("x-forwarded-client-cert", forwarded_client_cert(peer, config.client_cert_uri))
        if config.rbac and not self._rbac_allows(stream, authority):
            stream.flags = "RBAC"
            self._reply(stream, 403, DENIED_BODY)
            return False
        table = self.route_table
        if table is None:   # RDS has not delivered this listener's routes yet
            self.stats.no_route += 1
            stream.flags = "NR"
            self._reply(stream, 404, b"")
            return False
        selection = table.select(request.method, authority, request.target, headers)
        if selection is None:
            self.stats.no_route += 1
            stream.flags = "NR"
            self._reply(stream, 404, b"")
            return False
        plan = self._plans.get(id(selection.route))
        if plan is None or plan.route is not selection.route or plan.table is not table:
            plan = self._route_plan(table, selection)
        stream.plan = plan
        stream.response_mutations = plan.response_mutations
        action = selection.route.action
        if upgrade:
            if not isinstance(action, ForwardAction) or not self._upgrade_allowed(upgrade, action):
                self._reply(stream, 403, b"", keep_alive=False)
                return False
            self._run_async(stream, tunnel.serve_connect(self, stream, selection, action) if upgrade == "connect"
                            else self._tunnel(stream, selection, action, sent_upgrade_headers))
            return True
        elif isinstance(action, ForwardAction):
            return self._forward(stream, selection, action, authority)
        elif isinstance(action, DirectResponseAction):
            self.stats.rq_direct_response += 1
            self._reply(stream, action.status, action.body)
            return False
        else:
            assert isinstance(action, RedirectAction)
            self.stats.rq_redirect += 1
            # The request's scheme, as Envoy sees it, is x-forwarded-proto (set above).
            scheme = (headers.get("x-forwarded-proto") or "http").lower()
            location = action.location(scheme, authority, selection.path, selection.query,
                                       selection.matched)
            self._reply(stream, action.status, b"", extra=(("location", location),))
        return False

    def drain(self) -> None:
        """The listener is being replaced (LDS): idle connections close now, busy ones
        after their current response (`connection: close`), as Envoy drains them."""
        self.draining = True
        for conn in list(self.connections):
            if conn.active is None:
                conn.close()

    def rbac_stat_values(self) -> dict[str, int]:
        if not self.config.rbac:
            return {}
        return {"rbac.allowed": self.rbac_stats.allowed, "rbac.denied": self.rbac_stats.denied}

    def _rbac_allows(self, stream: Stream, authority: str) -> bool:
        conn = stream.conn
        request = stream.request
        peer = conn.tls_peer()
        subject = Subject(remote_ip=conn.peer[0], destination_ip=conn.local[0], destination_port=conn.local[1],
                          peer_uris=peer.uris if peer is not None else (), authenticated=peer is not None,
                          headers=request.headers,
                          pseudo={":method": request.method, ":authority": authority, ":path": request.target},
                          path=request.target.split("?", 1)[0])
        return allowed(self.config.rbac, subject, self.rbac_stats)

    # connection-manager header rules

    def _mutate_request_headers(self, stream: Stream) -> None:
        config = self.config
        headers = stream.request.headers
        # One pass for the names present: the rules below then test a set, not the list.
        names = {name for name, _ in headers.items}
        if "te" in names:
            te = headers.get("te")
            if te is not None and te.lower() != "trailers":
                headers.remove("te")
        peer = stream.downstream_remote[0]
        existing = headers.get_joined("x-forwarded-for") if "x-forwarded-for" in names else None
        if config.use_remote_address:
            remote = peer
            if not config.skip_xff_append:
                appended = self.local_address if _is_loopback(peer) else peer
                headers.set("x-forwarded-for", f"{existing},{appended}" if existing else appended)
            headers.set("x-forwarded-proto", "http")
            internal = self._is_internal(remote)
            edge = not internal
        else:
            entries = [entry.strip() for entry in existing.split(",")] if existing else []
            remote = entries[-1] if entries else ""
            internal = len(entries) == 1 and self._is_internal(remote)
            edge = False
            if "x-forwarded-proto" not in names:
                headers.add("x-forwarded-proto", "http")
        if internal:
            if not names.isdisjoint(_HOP_BY_HOP):
                headers.remove_all(_HOP_BY_HOP)
            headers.set("x-envoy-internal", "true")
        elif edge:
            if not names.isdisjoint(_EDGE_REMOVALS):
                headers.remove_all(_EDGE_REMOVALS)
            headers.set("x-envoy-external-address", remote)
        elif not names.isdisjoint(_EXTERNAL_REMOVALS):
            headers.remove_all(_EXTERNAL_REMOVALS)
        stream.internal = internal
        if config.generate_request_id:
            if "x-request-id" not in names:
                headers.add("x-request-id", self._request_id())
            elif edge and not config.preserve_external_request_id:
                headers.set("x-request-id", self._request_id())

    def _request_id(self) -> str:
        """A random version-4 UUID; Envoy's are random too, not cryptographic."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"

    def _is_internal(self, address: str) -> bool:
        networks = self.config.internal_networks
        if not networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    # the router

    def _forward(self, stream: Stream, selection: RouteSelection, action: ForwardAction,
                 authority: str) -> bool:
        """The router's per-request state, then the first attempt: an `Exchange` of
        callbacks when an idle connection is at hand and the request body is in (the
        common case), else the coroutine that can wait, stream bodies and retry."""
        request = stream.request
        headers = request.headers
        cluster_name = action.pick_cluster(self.rng.random()) if action.weighted_clusters else action.cluster
        cluster = self.clusters.get(cluster_name)
        if cluster is None:
            self.stats.no_cluster += 1
            stream.flags = "NC"
            self._reply(stream, 503, b"")
            return False
        plan = stream.plan
        policy = plan.policy
        timeout = plan.timeout
        per_try = plan.per_try
        if stream.internal:
            policy, timeout = _honour_envoy_headers(headers, policy, timeout)
            per_try = policy.per_try_timeout if policy is not None else 0.0
        stream.hash_key = self._hash_key(action.hash_policy, stream) if action.hash_policy else None
        for mutation in plan.request_mutations:
            mutation.apply(headers, stream)
        if action.host_rewrite_literal:
            headers.set("x-envoy-original-host", authority)
            headers.set("host", action.host_rewrite_literal)
            if action.append_x_forwarded_host:
                _append_forwarded_host(headers, authority)
        target = request.target
        if action.prefix_rewrite is not None or action.regex_rewrite is not None:
            rewritten = action.rewrite_path(selection.path, selection.query, selection.matched)
            if rewritten is not None:
                headers.set("x-envoy-original-path", target)
                target = rewritten
        if request.chunked:
            headers.set("transfer-encoding", "chunked")
        retry = RetryState(policy) if policy is not None and policy.num_retries > 0 else None
        if retry is not None and stream.internal and "retriable-status-codes" in retry.policy.retry_on:
            extra = headers.get("x-envoy-retriable-status-codes")
            if extra:
                retry.extra_status_codes = frozenset(
                    int(code) for code in extra.split(",") if code.strip().isdigit())
        stream.selection = selection
        stream.action = action
        stream.authority = authority
        stream.target = target
        stream.cluster = cluster
        stream.policy = policy
        stream.retry = retry
        stream.timeout = timeout
        stream.per_try = per_try
        stream.idle = plan.idle
        stream.deadline = stream.start + timeout if timeout > 0 else 0.0
        stream.tried = []
        stream.number = 0
        host = self._begin_attempt(stream)
        if host is None:
            return False
        pool = cluster.pool(host)
        connection = pool.take_idle() if request.body.done else None
        if connection is None:
            self._run_async(stream, self._forward_attempts(stream, (host, None)))
            return True
        when, kind = self._attempt_deadline(stream, stream.start)   # (no time passed since)
        Exchange(self, stream, host, pool, connection).start(
            _request_head(request.method, target, headers), when, kind)
        return True

    def continue_attempts(self, stream: Stream, host: Host, outcome: Attempt | str) -> None:
        """An exchange's first attempt needs what only the coroutine does (a retry, a reply
        after a failure): it goes on from that attempt's outcome."""
        self._run_async(stream, self._forward_attempts(stream, (host, outcome)))

    def _counted(self, stream: Stream, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        """The router's local replies carry the attempt count too, when asked for."""
        if stream.selection.virtual_host.include_attempt_count_in_response:
            return (*extra, ("x-envoy-attempt-count", str(stream.number)))
        return extra

    def _begin_attempt(self, stream: Stream) -> Host | None:
        """Number the attempt, pick its host and take a request slot from the breaker;
        None when it cannot start (the reply is sent)."""
        headers = stream.request.headers
        action = stream.action
        cluster = stream.cluster
        policy = stream.policy
        stream.number = number = stream.number + 1
        if stream.selection.virtual_host.include_request_attempt_count:
            headers.set("x-envoy-attempt-count", str(number))
        if not self.config.suppress_envoy_headers:
            plan = stream.plan
            if number == 1 and stream.timeout == plan.timeout and stream.per_try == plan.per_try:
                expected = plan.expected_timeout
            else:
                expected = _expected_timeout(stream.timeout, stream.per_try, stream.deadline,
                                             self._loop.time(), number)
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
            stream.flags = "UH"
            self._reply(stream, 503, b"no healthy upstream", extra=self._counted(stream))
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
            self._reply(stream, 503, RESET_PREFIX.encode() + b"reset reason: overflow",
                        extra=self._counted(stream, ("x-envoy-overloaded", "true")))
            return None
        cstats = cluster.stats
        cstats.upstream_rq_total += 1
        cstats.upstream_rq_active += 1
        host.active_requests += 1
        return host

    def end_attempt(self, stream: Stream, host: Host) -> None:
        """The attempt's request slot and gauges are given back."""
        cluster = stream.cluster
        cluster.breaker.finish_request()
        cluster.stats.upstream_rq_active -= 1
        host.active_requests -= 1

    def _attempt_deadline(self, stream: Stream, now: float) -> tuple[float, str]:
        """One timer per attempt: the nearest of the route, per-try and stream idle deadlines
        (0.0: none)."""
        when, kind = stream.deadline, GLOBAL_TIMEOUT
        per_try = stream.per_try
        if per_try > 0 and (not when or now + per_try < when):
            when, kind = now + per_try, PER_TRY_TIMEOUT
        idle = stream.idle
        if idle > 0 and (not when or now + idle < when):
            when, kind = now + idle, IDLE_TIMEOUT
        return when, kind

    async def _forward_attempts(self, stream: Stream, first: tuple[Host, Attempt | str | None]) -> None:
        """Attempts until one outcome is returned: `first` is the attempt already begun
        (its outcome, when an exchange got one)."""
        request = stream.request
        cluster = stream.cluster
        retry = stream.retry
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
                    head = _request_head(request.method, stream.target, request.headers)
                    outcome = await self._attempt(stream, cluster, host, head)
                if isinstance(outcome, Attempt):
                    status = outcome.status
                    cstats.count_status(status)
                    cluster.record_outcome(host, status)
                    if (retry is not None and retry.decide(status) and not request.body.overflowed
                            and await self._retry_allowed(stream, cluster, retry, stream.deadline)):
                        outcome.abandon()
                        continue
                    if number > 1:
                        cstats.upstream_rq_retry_success += 1 if status < 500 else 0
                    await self._respond(stream, outcome, number, stream.deadline)
                    return
            finally:
                self.end_attempt(stream, host)
            if outcome == OVERFLOW:
                stream.flags = "UO"
                self._reply(stream, 503, RESET_PREFIX.encode() + b"reset reason: overflow",
                            extra=self._counted(stream, ("x-envoy-overloaded", "true")))
                return
            cluster.record_outcome(host, None)
            stream.upstream = host.key
            if outcome == IDLE_TIMEOUT:
                stream.flags = "SI"
                self._reply(stream, 504, b"stream timeout", extra=self._counted(stream))
                return
            if outcome == GLOBAL_TIMEOUT:
                stream.flags = "UT"
                cstats.upstream_rq_timeout += 1
                self._reply(stream, 504, b"upstream request timeout", extra=self._counted(stream))
                return
            if outcome == PER_TRY_TIMEOUT:
                cstats.upstream_rq_per_try_timeout += 1
            last_failure = outcome
            if (retry is not None and retry.decide(outcome) and not request.body.overflowed
                    and await self._retry_allowed(stream, cluster, retry, stream.deadline)):
                continue
            if outcome == PER_TRY_TIMEOUT:
                stream.flags = "UT,URX" if number > 1 else "UT"
                self._reply(stream, 504, b"upstream request timeout", extra=self._counted(stream))
                return
            retried = "retried and the latest " if number > 1 else ""
            flag = {CONNECT_FAILURE: "UF", PROTOCOL_ERROR: "UPE"}.get(last_failure, "UC")
            stream.flags = f"{flag},URX" if number > 1 else flag
            body = f"{RESET_PREFIX}{retried}reset reason: {_RESET_REASONS[last_failure]}"
            # Envoy: a protocol error is the upstream's fault (502), other resets are 503.
            self._reply(stream, 502 if last_failure == PROTOCOL_ERROR else 503, body.encode(),
                        extra=self._counted(stream))
            return

    def _upgrade_allowed(self, upgrade: str, action: ForwardAction) -> bool:
        """Envoy: the connection manager's upgrade_configs enable a type; a route's own
        upgrade_configs enable or disable it for that route."""
        if upgrade in action.upgrades_disabled:
            return False
        return upgrade in self.config.upgrades or upgrade in action.upgrades

    async def _tunnel(self, stream: Stream, selection: RouteSelection, action: ForwardAction,
                      upgrade_headers: tuple[tuple[str, str], ...]) -> None:
        """An upgrade (WebSocket): forward the request on a fresh connection; on 101 the two
        connections become a byte pipe until either side closes; any other answer is
        relayed without its body and the connection closes (tunnel.decline_upgrade)."""
        request = stream.request
        headers = request.headers
        conn = stream.conn
        stream.selection = selection
        cluster = self.clusters.get(action.pick_cluster(self.rng.random()))
        if cluster is None:
            self._reply(stream, 503, b"", keep_alive=False)
            return
        table = self.route_table
        assert table is not None
        for mutation in table.request_mutations(selection):
            mutation.apply(headers, stream)
        for name, value in upgrade_headers:
            headers.add(name, value)
        target = action.rewrite_path(selection.path, selection.query, selection.matched) or request.target
        host = cluster.original_destination(stream.conn.local) if cluster.original_dst else cluster.choose(None)
        if host is None:
            self._reply(stream, 503, b"no healthy upstream", keep_alive=False)
            return
        pool = cluster.pool(host)
        loop = self._loop
        if not cluster.breaker.try_open_connection():
            self._reply(stream, 503, RESET_PREFIX.encode() + b"reset reason: overflow",
                        keep_alive=False, extra=(("x-envoy-overloaded", "true"),))
            return
        try:
            connection = await pool.connect()
        except ConnectFailure:
            cluster.breaker.close_connection()
            self._reply(stream, 503, (RESET_PREFIX + "reset reason: remote connection failure").encode(),
                        keep_alive=False)
            return
        attempt = Attempt(connection, pool, host, loop.time())
        connection.start(attempt, _request_head(request.method, target, headers))
        timer = (loop.call_later(action.timeout, attempt.expire, GLOBAL_TIMEOUT)
                 if action.timeout > 0 else None)
        try:
            while attempt.headers is None and not attempt.reset and attempt.expired is None:
                if conn.closed:
                    attempt.abandon()
                    return
                await attempt.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if attempt.headers is None:
            attempt.abandon()
            if attempt.expired is not None:
                self._reply(stream, 504, b"upstream request timeout", keep_alive=False)
            else:
                self._reply(stream, 503, (RESET_PREFIX + "reset reason: connection termination").encode(),
                            keep_alive=False)
            return
        if attempt.status != 101:
            tunnel.decline_upgrade(self, stream, attempt)
            return
        response = attempt.headers
        response.remove("transfer-encoding")
        for mutation in stream.response_mutations:
            mutation.apply(response, stream)
        self._server_headers(response, stream)
        stream.status = 101
        stream.upstream = host.key
        stream.committed = True
        self.stats.count_status(101)
        conn.write(encode_head(101, response))
        closed = loop.create_future()

        def finish() -> None:
            if not closed.done():
                closed.set_result(None)

        connection.tunnel = conn.write
        conn.tunnel = connection.write
        connection.on_lost = finish
        conn.on_lost = finish
        for data in connection.early_tunnel_data:
            conn.write(data)
        for data in conn.early_tunnel_data:
            connection.write(data)
        connection.early_tunnel_data.clear()
        conn.early_tunnel_data.clear()
        if not (connection.closed or conn.closed):
            await closed
        connection.abort()
        conn.close()
        conn.response_done(False)

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
            if deadline and self._loop.time() + delay >= deadline:
                return False
            await asyncio.sleep(delay)
            return not stream.conn.closed
        finally:
            cluster.breaker.finish_retry()

    async def _attempt(self, stream: Stream, cluster: Cluster, host: Host, head: bytes) -> Attempt | str:
        loop = self._loop
        deadline = stream.deadline
        pool = cluster.pool(host)
        connection = pool.take_idle()
        if connection is None:
            try:
                if deadline:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return GLOBAL_TIMEOUT
                    connection = await asyncio.wait_for(pool.acquire(), remaining)
                else:
                    connection = await pool.acquire()
            except ConnectFailure:
                return CONNECT_FAILURE
            except Overflow:
                return OVERFLOW
            except TimeoutError:
                return GLOBAL_TIMEOUT
        now = loop.time()
        attempt = Attempt(connection, pool, host, now)
        connection.start(attempt, head)
        body = stream.request.body
        pump: asyncio.Task[None] | None = None
        if stream.request.has_body:
            if body.done:
                _write_body(connection, body.chunks, stream.request.chunked, True)
            else:
                pump = loop.create_task(self._pump_body(stream, connection))
        when, kind = self._attempt_deadline(stream, now)
        timer = loop.call_at(when, attempt.expire, kind) if when else None
        try:
            while attempt.headers is None and not attempt.reset and attempt.expired is None:
                if body.failed or stream.conn.closed:
                    attempt.abandon()
                    raise _DownstreamGone()
                await attempt.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if attempt.headers is not None:
            return attempt
        if pump is not None:
            pump.cancel()
        attempt.abandon()
        if attempt.expired is not None:
            return attempt.expired
        return PROTOCOL_ERROR if connection.protocol_error else RESET

    async def _pump_body(self, stream: Stream, connection: UpstreamConnection) -> None:
        body = stream.request.body
        chunked = stream.request.chunked
        sent = 0
        while True:
            chunks = body.chunks
            if sent < len(chunks):
                _write_body(connection, chunks[sent:], chunked, False)
                if body.overflowed:
                    chunks.clear()
                    sent = 0
                else:
                    sent = len(chunks)
            if body.done:
                if chunked:
                    connection.write(LAST_CHUNK)
                return
            if body.failed or connection.closed:
                return
            await body.wait()

    def commit_head(self, stream: Stream, status: int, headers: Headers, host: Host,
                    attempts: int) -> tuple[bytes, bool, bool, bool]:
        """The response head as it goes downstream (Envoy's response headers, the route's
        mutations, framing), and (head, keep_alive, chunked, no_body)."""
        request = stream.request
        framed_length = headers.get("content-length")
        headers.remove_all(_RESPONSE_HOP_BY_HOP)
        config = self.config
        if not config.suppress_envoy_headers:
            stream.service_time = service_time = str(int((self._loop.time() - stream.start) * 1000))
            headers.set("x-envoy-upstream-service-time", service_time)
        else:
            stream.service_time = headers.get("x-envoy-upstream-service-time")
        if stream.selection.virtual_host.include_attempt_count_in_response:
            headers.set("x-envoy-attempt-count", str(attempts))
        stream.status = status
        stream.upstream = host.key
        for mutation in stream.response_mutations:
            mutation.apply(headers, stream)
        self._server_headers(headers, stream)
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        keep_alive = (request.keep_alive and request.body.done and not stream.conn._error
                      and not self.draining)
        chunked = False
        if framed_length is not None:
            headers.set("content-length", framed_length)
        elif no_body:
            pass
        elif request.version == "1.1":
            chunked = True
            headers.set("transfer-encoding", "chunked")
        else:
            keep_alive = False
        if not keep_alive:
            headers.set("connection", "close")
        self.stats.count_status(status)
        stream.committed = True
        return encode_head(status, headers), keep_alive, chunked, no_body

    def commit_raw_head(self, stream: Stream, status: int, raw: RawHeaders,
                        host: Host) -> tuple[bytes, bool, bool, bool]:
        """commit_head for a first attempt's raw header lines: one pass with the route's
        compiled plan (proxy/http/response_plan.py) when it has one."""
        plan = stream.plan.response_plan
        if plan is None:
            return self.commit_head(stream, status, decode_headers(raw), host, 1)
        parts, framed, dated = plan.head_parts(status_line(status), raw)
        if not self.config.suppress_envoy_headers:
            stream.service_time = service_time = str(int((self._loop.time() - stream.start) * 1000))
            parts += (b"x-envoy-upstream-service-time: ", service_time.encode(), b"\r\n")
        if not dated:
            parts.append(date_line())
        request = stream.request
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        keep_alive = (request.keep_alive and request.body.done and not stream.conn._error
                      and not self.draining)
        chunked = False
        if not framed and not no_body:
            if request.version == "1.1":
                chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                keep_alive = False
        parts.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        stream.status = status
        stream.upstream = host.key
        self.stats.count_status(status)
        stream.committed = True
        return b"".join(parts), keep_alive, chunked, no_body

    def _route_plan(self, table: RouteTable, selection: RouteSelection) -> RoutePlan:
        if len(self._plans) > 4096:   # routes of replaced route tables
            self._plans.clear()
        plan = self._plans[id(selection.route)] = RoutePlan(self, table, selection)
        return plan

    async def _respond(self, stream: Stream, attempt: Attempt, attempts: int,
                       deadline: float) -> None:
        conn = stream.conn
        assert attempt.headers is not None
        head, keep_alive, chunked, no_body = self.commit_head(
            stream, attempt.status, attempt.headers, attempt.host, attempts)
        loop = self._loop
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
            stream.bytes_sent += len(chunk)
            conn.write(encode_chunk(chunk) if chunked else chunk)
            if conn.write_paused:
                upstream.pause_reading()
                conn.on_drain = upstream.resume_reading

        for chunk in attempt.buffer:
            relay(chunk)
        attempt.buffer.clear()
        attempt.writer = relay
        timer = loop.call_at(deadline, attempt.expire, GLOBAL_TIMEOUT) if deadline else None
        try:
            while not attempt.complete and not attempt.reset and attempt.expired is None:
                if conn.closed:
                    break
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
        # Reset or timeout after the head went out: all Envoy can do on HTTP/1.1 is close.
        stream.flags = "UT" if attempt.expired else "UC"
        attempt.abandon()
        conn.abort()
        conn.response_done(False)

    # replies

    def _server_headers(self, headers: Headers, stream: Stream) -> None:
        if self.config.always_set_request_id_in_response:
            request_id = stream.request.headers.get("x-request-id")
            if request_id is not None:
                headers.set("x-request-id", request_id)
        mode = self.config.server_header
        if mode == "OVERWRITE":
            headers.set("server", self.config.server_name)
        elif mode == "APPEND_IF_ABSENT" and "server" not in headers:
            headers.add("server", self.config.server_name)
        if "date" not in headers:
            headers.add("date", http_date())

    def _local_head(self, status: int, body: bytes, stream: Stream | None, close: bool = False,
                    extra: Sequence[tuple[str, str]] = ()) -> bytes:
        headers = Headers(list(extra))
        if body or status not in (204, 304):
            headers.add("content-length", str(len(body)))
        if body:
            headers.add("content-type", "text/plain")
        if stream is not None:
            for mutation in stream.response_mutations:
                mutation.apply(headers, stream)
            if self.config.always_set_request_id_in_response:
                request_id = stream.request.headers.get("x-request-id")
                if request_id is not None:
                    headers.set("x-request-id", request_id)
        headers.add("date", http_date())
        headers.add("server", self.config.server_name)
        if close:
            headers.add("connection", "close")
        return encode_head(status, headers)

    def _reply(self, stream: Stream, status: int, body: bytes, keep_alive: bool = True,
               extra: Sequence[tuple[str, str]] = ()) -> None:
        request = stream.request
        keep_alive = keep_alive and request.keep_alive and request.body.done and not self.draining
        self.stats.count_status(status)
        stream.status = status
        stream.committed = True
        conn = stream.conn
        payload = b"" if request.method == "HEAD" else body
        stream.bytes_sent = len(payload)
        conn.write(self._local_head(status, body, stream, close=not keep_alive, extra=extra) + payload)
        conn.response_done(keep_alive)

    def _hash_key(self, policies: tuple[HashPolicy, ...], stream: Stream) -> int | None:
        key: int | None = None
        headers = stream.request.headers
        for policy in policies:
            value: str | None
            if policy.kind == "header":
                value = headers.get_joined(policy.name)
                if value is not None and "," in value:
                    value = "".join(line for name, line in headers.items if name == policy.name)
            elif policy.kind == "cookie":
                value = _cookie(headers, policy.name)
            elif policy.kind == "source_ip":
                value = stream.downstream_remote[0] or None
            else:
                value = _query_parameter(stream.request.target, policy.name)
            if value is not None:
                key = combine_hash_keys(key, hash_key_for(value))
            if policy.terminal and key is not None:
                break
        return key


class _DownstreamGone(Exception):
    """The client went away or sent a malformed body while an attempt was in flight."""


def _request_head(method: str, target: str, headers: Headers) -> bytes:
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + "".join(
        [f"{name}: {value}\r\n" for name, value in headers.items]).encode("latin-1") + b"\r\n"


def _write_body(connection: UpstreamConnection, chunks: list[bytes], chunked: bool, last: bool) -> None:
    if chunked:
        data = b"".join(encode_chunk(chunk) for chunk in chunks if chunk)
        connection.write(data + LAST_CHUNK if last else data)
    else:
        connection.write(b"".join(chunks))


def _expected_timeout(timeout: float, per_try: float, deadline: float, now: float,
                      number: int) -> str | None:
    """x-envoy-expected-rq-timeout-ms: the per-try timeout if it is the tighter bound, else
    the route timeout (what remains of it on a retry); None without either."""
    if timeout > 0:
        remaining = timeout if number == 1 else max(deadline - now, 0.0)
        if per_try > 0 and per_try < remaining:
            return str(int(per_try * 1000))
        return str(int(remaining * 1000))
    if per_try > 0:
        return str(int(per_try * 1000))
    return None


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


def _append_forwarded_host(headers: Headers, host: str) -> None:
    existing = headers.get_joined("x-forwarded-host")
    headers.set("x-forwarded-host", f"{existing},{host}" if existing else host)


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1" or address.startswith("::ffff:127.")


def _cookie(headers: Headers, name: str) -> str | None:
    for key, value in headers.items:
        if key == "cookie":
            for pair in value.split(";"):
                cookie_name, _, cookie_value = pair.strip().partition("=")
                if cookie_name == name:
                    return cookie_value
    return None


def _query_parameter(target: str, name: str) -> str | None:
    _, _, query = target.partition("?")
    return parse_query(query).get(name) if query else None
