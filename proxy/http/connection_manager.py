"""The HTTP connection manager: from a parsed request to the router, a local reply, or a tunnel.

Theory of operation, per request (`serve`, synchronous up to the router's first attempt):
1. connection-manager rules on the request headers (Envoy's mutateRequestHeaders):
   hop-by-hop headers go; with `use_remote_address` the peer (or, for a loopback peer, the
   host's first non-loopback address) is appended to x-forwarded-for, x-forwarded-proto is
   overwritten and the request is external unless the peer is in `internal_address_config`
   (Envoy 1.40 treats no address as internal by default); an external request loses the
   x-envoy-* control headers, an edge one gets x-envoy-external-address and a fresh
   x-request-id; a missing x-request-id is generated;
2. routing (proxy/router/route_table.py) and the route's plan (proxy/http/route_plan.py):
   no route → 404 with an empty body; direct responses and redirects are answered here;
   an upgrade (WebSocket) becomes a tunnel; everything else goes to the router
   (proxy/http/router.py), which attempts it upstream. A selection no header matcher
   decided holds for every request with the same authority and target, so it is kept with
   its plan for them (at most _ROUTE_CACHE_LIMIT, dropped when the route table is replaced);
3. the response head the router got gets Envoy's headers here (`commit_head`,
   `commit_raw_head`: x-envoy-upstream-service-time, server, date, the route's response
   mutations, framing); local replies are written here too (`reply`).

Whoever finishes a request calls `end_stream` once (gauges, the access log).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from proxy.access_log import AccessLogWriter, http_operators
from proxy.http import tunnel
from proxy.http.attempt import GLOBAL_TIMEOUT, Attempt
from proxy.http.client import RawHeaders, decode_headers
from proxy.http.deadlines import Deadlines
from proxy.http.downstream import DownstreamConnection
from proxy.http.grpc_reply import GRPC_DEADLINE_EXCEEDED, grpc_reply_headers
from proxy.http.hcm_config import HcmConfig
from proxy.http.headers import Headers
from proxy.http.inline import run_inline
from proxy.http.request_id import RequestIds
from proxy.http.request_timeouts import TimedDownstreamConnection
from proxy.http.response import (
    CODEC_CHUNKED,
    STATUS_LINES,
    date_line,
    encode_head,
    http_date,
    status_line,
)
from proxy.http.route_plan import RoutePlan
from proxy.http.router import RESET_PREFIX, DownstreamGone, Router, request_head
from proxy.http.stream import Stream
from proxy.http.stream_duration import DURATION_BODY, is_grpc
from proxy.rbac import DENIED_BODY, RbacStats, Subject, allowed
from proxy.router.route import (
    DirectResponseAction,
    ForwardAction,
    RedirectAction,
)
from proxy.router.route_table import RouteSelection, RouteTable
from proxy.stats import Http1CodecStats, HttpStats, ListenerStats
from proxy.tls.peer_certificate import forwarded_client_cert
from proxy.upstream.host import Host
from proxy.upstream.pool import ConnectFailure

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

_FORWARDED_PROTO_HTTP = ("x-forwarded-proto", "http")
_ROUTE_CACHE_LIMIT = 4096   # (authority, target) pairs whose route and plan are kept


class HttpConnectionManager:
    def __init__(self, config: HcmConfig, clusters: dict[str, Cluster], rng: random.Random,
                 local_address: str) -> None:
        self.config = config
        self.route_table = config.route_table   # swapped whole by RDS updates
        self.clusters = clusters
        self.rng = rng
        self.request_ids = RequestIds(rng)
        self.local_address = local_address
        self.stats = HttpStats()
        self.codec_stats = Http1CodecStats()   # the process's one http1.* scope, once registered
        # the listener's, whose downstream_cx_active/destroy its connections move (its
        # accept loop counts downstream_cx_total)
        self.listener_stats = ListenerStats()
        # bytes of the connections closed so far (the open ones count their own)
        self.closed_rx_bytes = 0
        self.closed_tx_bytes = 0
        self.rbac_stats = RbacStats()
        self.draining = False   # the listener was replaced: close connections after their response
        self.connections: set[DownstreamConnection] = set()
        # route plans by route (a plan keeps its route, so the id is not reused)
        self._plans: dict[int, RoutePlan] = {}
        # the route selection and plan of an authority and target, while the route table
        # they came from is the current one (only outcomes no header matcher decided)
        self._routes: dict[str, dict[str, tuple[RouteSelection, RoutePlan]]] = {}
        self._routes_table: RouteTable | None = None
        self._routes_count = 0
        self._loop = self.loop = asyncio.get_event_loop()
        self.deadlines = Deadlines(self._loop)
        self.access_log = (AccessLogWriter(config.access_logs, http_operators(config.use_remote_address))
                           if config.access_logs else None)
        self.router = Router(self)
        # connections get per-connection timers only when this manager sets some
        self.connection_class: type[DownstreamConnection] = (
            TimedDownstreamConnection if (config.request_headers_timeout or config.request_timeout
                                          or config.max_connection_duration) else DownstreamConnection)

    # connections

    def connection_opened(self, conn: DownstreamConnection) -> None:
        self.connections.add(conn)
        self.stats.downstream_cx_total += 1
        self.stats.downstream_cx_http1_total += 1
        self.stats.downstream_cx_active += 1
        self.listener_stats.downstream_cx_active += 1

    def connection_closed(self, conn: DownstreamConnection) -> None:
        self.connections.discard(conn)
        stats = self.stats
        stats.downstream_cx_active -= 1
        stats.downstream_cx_destroy += 1
        if conn.closed_here:
            stats.downstream_cx_destroy_local += 1
        else:
            stats.downstream_cx_destroy_remote += 1
        listener_stats = self.listener_stats
        listener_stats.downstream_cx_active -= 1
        listener_stats.downstream_cx_destroy += 1
        self.closed_rx_bytes += conn.rx_bytes
        self.closed_tx_bytes += conn.tx_bytes

    def protocol_error_reply(self, conn: DownstreamConnection, status: int) -> None:
        body = {400: b"Bad Request", 426: b"Upgrade Required"}.get(
            status, b"Request Header Fields Too Large")
        self.stats.count_status(status)
        conn.write(self.local_head(status, body, None, close=True) + body)
        conn.close()

    # one request

    def serve(self, conn: DownstreamConnection, stream: Stream) -> None:
        self.stats.downstream_rq_total += 1   # (downstream_rq_active and _http1_total follow from it)
        stream.start = self._loop.time()
        try:
            if self._handle(stream):
                return   # an exchange or a coroutine finishes the stream
        except Exception:
            log.exception("request %s %s failed", stream.method, stream.target)
            if not stream.committed:
                self.reply(stream, 500, b"", keep_alive=False)
            else:
                conn.abort()
                conn.response_done(False)
        self.end_stream(stream)

    def end_stream(self, stream: Stream) -> None:
        """The request is over (answered, or its client gone): gauges and the access log."""
        self.stats.downstream_rq_completed += 1
        if self.access_log is not None:
            self.access_log.write(stream, self._loop.time())

    def run_async(self, stream: Stream, work: Coroutine[Any, Any, None]) -> None:
        """Finish the stream in a coroutine (retries, streamed bodies, upgrades)."""
        run_inline(self._guarded(stream, work))

    async def _guarded(self, stream: Stream, work: Coroutine[Any, Any, None]) -> None:
        conn = stream.conn
        try:
            await work
        except DownstreamGone:
            if stream.body.failed and not stream.committed:
                self.reply(stream, 400, b"Bad Request", keep_alive=False)
            else:
                conn.response_done(False)
        except Exception:
            log.exception("request %s %s failed", stream.method, stream.target)
            if not stream.committed:
                self.reply(stream, 500, b"", keep_alive=False)
            else:
                conn.abort()
                conn.response_done(False)
        finally:
            self.end_stream(stream)

    def _handle(self, stream: Stream) -> bool:
        """Serve the request; True when it goes on asynchronously (whatever finishes it
        calls end_stream), False when it was answered here."""
        config = self.config
        headers = stream.headers
        if stream.version == "1.0" and not config.accept_http_10:
            self.reply(stream, 426, b"Upgrade Required", keep_alive=False)
            return False
        if stream.method == "CONNECT" and not tunnel.accept_request(stream):
            self.reply(stream, 400, b"Bad Request", keep_alive=False)
            return False
        authority = headers.get("host")
        if authority is None:
            if stream.version == "1.0" and config.default_host_for_http_10:
                authority = config.default_host_for_http_10
                headers.add("host", authority)
            else:
                self.reply(stream, 400, b"", keep_alive=False)
                return False
        if stream.expect_continue:
            headers.remove("expect")
            if not stream.body.done:
                stream.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        upgrade = (("connect" if stream.method == "CONNECT" else (headers.get("upgrade") or "").lower())
                   if stream.upgrade else "")
        sent_upgrade_headers = tunnel.upgrade_headers(headers) if upgrade else ()
        names = self._mutate_request_headers(stream)
        if "x-forwarded-client-cert" in names:   # SANITIZE and SANITIZE_SET both drop it
            headers.remove("x-forwarded-client-cert")
        if config.forward_client_cert == "SANITIZE_SET":
            peer = stream.conn.tls_peer()
            if peer is not None:
                headers.add("x-forwarded-client-cert", forwarded_client_cert(peer, config.client_cert_uri))
        if config.rbac and not self._rbac_allows(stream, authority):
            stream.flags = "RBAC"
            self.reply(stream, 403, DENIED_BODY)
            return False
        table = self.route_table
        if table is None:   # RDS has not delivered this listener's routes yet
            self.stats.no_route += 1
            stream.flags = "NR"
            self.reply(stream, 404, b"")
            return False
        if table is not self._routes_table:
            self._routes_table = table
            self._routes = {}
            self._routes_count = 0
        by_target = self._routes.get(authority)
        # a CONNECT's target is an authority, never remembered (RouteTable._select_connect)
        routed = by_target.get(stream.target) if by_target is not None and upgrade != "connect" else None
        if routed is None:
            selection = table.select(stream.method, authority, stream.target, headers)
            if selection is None:
                self.stats.no_route += 1
                stream.flags = "NR"
                self.reply(stream, 404, b"")
                return False
            plan = self._route_plan(table, selection)
            if selection.deterministic:
                self._remember_route(authority, stream.target, (selection, plan))
        else:
            selection, plan = routed
        stream.plan = plan
        stream.selection = selection
        stream.response_mutations = plan.response_mutations
        action = selection.route.action
        if upgrade:
            if not isinstance(action, ForwardAction) or not self._upgrade_allowed(upgrade, action):
                self.reply(stream, 403, b"", keep_alive=False)
                return False
            self.run_async(stream, tunnel.counted(self.stats, tunnel.serve_connect(self, stream, selection, action)
                           if upgrade == "connect" else self._tunnel(stream, selection, action, sent_upgrade_headers)))
            return True
        elif isinstance(action, ForwardAction):
            return self.router.forward(stream, action, authority, names)
        elif isinstance(action, DirectResponseAction):
            self.stats.rq_direct_response += 1
            self.reply(stream, action.status, action.body)
            return False
        else:
            assert isinstance(action, RedirectAction)
            self.stats.rq_redirect += 1
            # The request's scheme, as Envoy sees it, is x-forwarded-proto (set above).
            scheme = (headers.get("x-forwarded-proto") or "http").lower()
            location = action.location(scheme, authority, selection.path, selection.query,
                                       selection.matched)
            self.reply(stream, action.status, b"", extra=(("location", location),))
        return False

    def _route_plan(self, table: RouteTable, selection: RouteSelection) -> RoutePlan:
        plan = self._plans.get(id(selection.route))
        if plan is None or plan.route is not selection.route or plan.table is not table:
            if len(self._plans) > 4096:   # routes of replaced route tables
                self._plans.clear()
            plan = self._plans[id(selection.route)] = RoutePlan(self.config, table, selection)
        return plan

    def _remember_route(self, authority: str, target: str,
                        routed: tuple[RouteSelection, RoutePlan]) -> None:
        if self._routes_count >= _ROUTE_CACHE_LIMIT:   # many distinct targets: start afresh
            self._routes = {}
            self._routes_count = 0
        self._routes.setdefault(authority, {})[target] = routed
        self._routes_count += 1

    def drain(self) -> None:
        """The listener is being replaced (LDS): idle connections close now, busy ones
        after their current response (`connection: close`), as Envoy drains them."""
        self.draining = True
        for conn in list(self.connections):
            if conn.active is None:
                conn.close()

    def extra_stat_values(self) -> dict[str, int]:
        """Stats of the http.PREFIX scope kept here: bytes, and the RBAC filter's."""
        rx, tx = self.closed_rx_bytes, self.closed_tx_bytes
        for conn in self.connections:
            rx += conn.rx_bytes
            tx += conn.tx_bytes
        return {"downstream_cx_rx_bytes_total": rx, "downstream_cx_tx_bytes_total": tx,
                **self.rbac_stat_values()}

    def rbac_stat_values(self) -> dict[str, int]:
        if not self.config.rbac:
            return {}
        return {"rbac.allowed": self.rbac_stats.allowed, "rbac.denied": self.rbac_stats.denied}

    def _rbac_allows(self, stream: Stream, authority: str) -> bool:
        conn = stream.conn
        peer = conn.tls_peer()
        subject = Subject(remote_ip=conn.peer[0], destination_ip=conn.local[0], destination_port=conn.local[1],
                          peer_uris=peer.uris if peer is not None else (), authenticated=peer is not None,
                          headers=stream.headers,
                          pseudo={":method": stream.method, ":authority": authority, ":path": stream.target},
                          path=stream.target.split("?", 1)[0])
        return allowed(self.config.rbac, subject, self.rbac_stats)

    # connection-manager header rules

    def _mutate_request_headers(self, stream: Stream) -> set[str]:
        """Apply the rules; returns the names of the client's headers."""
        config = self.config
        headers = stream.headers
        names = stream.header_names   # the rules below test this set, not the list
        if "te" in names:
            te = headers.get("te")
            if te is not None and te.lower() != "trailers":
                headers.remove("te")
        existing = headers.get_joined("x-forwarded-for") if "x-forwarded-for" in names else None
        if config.use_remote_address:
            remote = peer = stream.downstream_remote[0]
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
                headers.items.append(_FORWARDED_PROTO_HTTP)
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
                headers.items.append(("x-request-id", self.request_ids.next()))
            elif edge and not config.preserve_external_request_id:
                headers.set("x-request-id", self.request_ids.next())
        return names

    def _is_internal(self, address: str) -> bool:
        networks = self.config.internal_networks
        if not networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

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
        headers = stream.headers
        conn = stream.conn
        stream.selection = selection
        cluster = self.clusters.get(action.pick_cluster(self.rng.random()))
        if cluster is None:
            self.reply(stream, 503, b"", keep_alive=False)
            return
        table = self.route_table
        assert table is not None
        for mutation in table.request_mutations(selection):
            mutation.apply(headers, stream)
        for name, value in upgrade_headers:
            headers.add(name, value)
        target = action.rewrite_path(selection.path, selection.query, selection.matched) or stream.target
        host = cluster.original_destination(stream.conn.local) if cluster.original_dst else cluster.choose(None)
        if host is None:
            self.reply(stream, 503, b"no healthy upstream", keep_alive=False)
            return
        pool = cluster.pool(host)
        loop = self._loop
        if not cluster.breaker.try_open_connection():
            self.reply(stream, 503, RESET_PREFIX.encode() + b"reset reason: overflow",
                        keep_alive=False, extra=(("x-envoy-overloaded", "true"),))
            return
        try:
            connection = await pool.connect()
        except ConnectFailure:
            cluster.breaker.close_connection()
            self.reply(stream, 503, (RESET_PREFIX + "reset reason: remote connection failure").encode(),
                        keep_alive=False)
            return
        attempt = Attempt(connection, pool, host, loop.time())
        connection.start(attempt, request_head(stream.method, target, headers))
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
                self.reply(stream, 504, b"upstream request timeout", keep_alive=False)
            else:
                self.reply(stream, 503, (RESET_PREFIX + "reset reason: connection termination").encode(),
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
        joined = tunnel.Tunnel(conn, connection, stream.plan.idle)
        joined.start(connection.early_tunnel_data)
        connection.early_tunnel_data = []
        await joined.run()

    def commit_head(self, stream: Stream, status: int, headers: Headers, host: Host,
                    attempts: int) -> tuple[bytes, bool, bool, bool]:
        """The response head as it goes downstream (Envoy's response headers, the route's
        mutations, framing), and (head, keep_alive, chunked, no_body)."""
        framed_length = headers.get("content-length")
        headers.remove_all(_RESPONSE_HOP_BY_HOP)
        config = self.config
        if not config.suppress_envoy_headers:
            # Envoy counts from the request's end: a streamed body's last chunk sent on
            since = stream.body.arrived if stream.body.arrived > stream.start else stream.start
            stream.service_time = service_time = str(int((self._loop.time() - since) * 1000))
            headers.set("x-envoy-upstream-service-time", service_time)
        else:
            stream.service_time = headers.get("x-envoy-upstream-service-time")
        if stream.selection.virtual_host.include_attempt_count_in_response:
            headers.set("x-envoy-attempt-count", str(attempts))
        stream.status = status
        stream.upstream = host.key
        stream.response_headers = headers   # (for the access log's %RESP(..)%)
        cookie = getattr(stream, "set_cookie", None)   # a generated hash cookie
        if cookie is not None:
            headers.add("set-cookie", cookie)
        for mutation in stream.response_mutations:
            mutation.apply(headers, stream)
        self._server_headers(headers, stream)
        no_body = stream.method == "HEAD" or status in (204, 304) or status < 200
        keep_alive = (stream.keep_alive and stream.body.done and not stream.conn._error
                      and not self.draining and not stream.conn.draining)
        chunked = False
        if framed_length is not None:
            headers.set("content-length", framed_length)
        elif no_body:
            pass
        elif stream.version == "1.1":
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
        parts, framed, dated = plan.head_parts(STATUS_LINES.get(status) or status_line(status), raw)
        if not self.config.suppress_envoy_headers:
            stream.service_time = service_time = str(int((self._loop.time() - stream.start) * 1000))
            parts += (b"x-envoy-upstream-service-time: ", service_time.encode(), b"\r\n")
        if not dated:
            parts.append(date_line())
        no_body = stream.method == "HEAD" or status in (204, 304) or status < 200
        keep_alive = (stream.keep_alive and stream.body.done and not stream.conn._error
                      and not self.draining and not stream.conn.draining)
        chunked = False
        if not framed and not no_body:
            if stream.version == "1.1":
                chunked = True
                parts.append(CODEC_CHUNKED)
            else:
                keep_alive = False
        parts.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        stream.status = status
        stream.upstream = host.key
        stream.response_headers = parts   # (for the access log's %RESP(..)%: the head as sent)
        if 200 <= status < 300:   # (the common case without a call)
            self.stats.downstream_rq_2xx += 1
        else:
            self.stats.count_status(status)
        stream.committed = True
        return b"".join(parts), keep_alive, chunked, no_body

    # replies

    def _server_headers(self, headers: Headers, stream: Stream) -> None:
        if self.config.always_set_request_id_in_response:
            request_id = stream.headers.get("x-request-id")
            if request_id is not None:
                headers.set("x-request-id", request_id)
        mode = self.config.server_header
        if mode == "OVERWRITE":
            headers.set("server", self.config.server_name)
        elif mode == "APPEND_IF_ABSENT" and "server" not in headers:
            headers.add("server", self.config.server_name)
        if "date" not in headers:
            headers.add("date", http_date())

    def local_head(self, status: int, body: bytes, stream: Stream | None, close: bool = False,
                    extra: Sequence[tuple[str, str]] = ()) -> bytes:
        headers = Headers(list(extra))
        if body or status not in (204, 304):
            headers.add("content-length", str(len(body)))
        if body:
            headers.add("content-type", "text/plain")
        if stream is not None:
            stream.response_headers = headers   # (for the access log's %RESP(..)%)
            for mutation in stream.response_mutations:
                mutation.apply(headers, stream)
            if self.config.always_set_request_id_in_response:
                request_id = stream.headers.get("x-request-id")
                if request_id is not None:
                    headers.set("x-request-id", request_id)
        headers.add("date", http_date())
        headers.add("server", self.config.server_name)
        if close:
            headers.add("connection", "close")
        return encode_head(status, headers)

    def duration_timeout_reply(self, stream: Stream, extra: tuple[tuple[str, str], ...]) -> None:
        """max_stream_duration reached before a response (proxy/http/stream_duration.py): 504,
        408 while the request is still arriving (gRPC: DEADLINE_EXCEEDED)."""
        self.reply(stream, 504 if stream.body.done else 408, DURATION_BODY, extra=extra,
                   grpc_status=GRPC_DEADLINE_EXCEEDED)

    def reply(self, stream: Stream, status: int, body: bytes, keep_alive: bool = True,
               extra: Sequence[tuple[str, str]] = (), grpc_status: str = "") -> None:
        """A local reply; to a gRPC request, in gRPC's form (proxy/http/grpc_reply.py)."""
        if "content-type" in stream.header_names and is_grpc(stream.headers):
            status, body, extra = 200, b"", grpc_reply_headers(status, body, extra, grpc_status)
        keep_alive = (keep_alive and stream.keep_alive and stream.body.done and not self.draining
                      and not stream.conn.draining)
        self.stats.count_status(status)
        stream.status = status
        stream.committed = True
        conn = stream.conn
        payload = b"" if stream.method == "HEAD" else body
        stream.bytes_sent = len(payload)
        conn.write(self.local_head(status, body, stream, close=not keep_alive, extra=extra) + payload)
        conn.response_done(keep_alive)

def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1" or address.startswith("::ffff:127.")


