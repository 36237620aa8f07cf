"""Tunnels through the HTTP connection manager: HTTP/1.1 CONNECT, from the client through a
route to a host of a cluster (Envoy's CONNECT support), and the answers to upgrades (checked
against Envoy 1.40 by tests/proxy/scenarios/own-connect-* and own-websocket-upgrade).

Rules of CONNECT:
- A CONNECT names its destination in authority form, `host:port`. Any other target, or a
  CONNECT that announces a body (Content-Length or Transfer-Encoding), is a 400
  (`accept_request`). The target is the request's authority (it replaces the Host header),
  so it chooses the virtual host; only routes with `connect_matcher` match a CONNECT (none
  does: 404). Every bytes after the head belong to the tunnel, so the connection closes
  after any local reply.
- CONNECT is an upgrade: enabled by the connection manager's or the route's upgrade_configs
  (else 403, as any upgrade).
- Terminated (the route's upgrade config has `connect_config`): the proxy connects to a host
  of the route's cluster and, once connected, answers `200` itself (date and server, no
  body framing); then raw bytes flow both ways until either side closes. A failed connect is
  a 503 "... reset reason: remote connection failure".
- Passed through (no connect_config): the CONNECT goes to the host as it came (with the
  route's header mutations), on a connection of its own; a 2xx answer turns both
  connections into a tunnel, any other answer is relayed and the connection closes.
- Bytes the client sent before the tunnel was up are sent first; a side that cannot keep up
  pauses reading on the other (the tunnel never buffers without bound).
- A client's half-close (FIN) ends the tunnel, as Envoy 1.40 ends an HTTP/1.1 one: the
  upstream gets the FIN after every byte the client sent before it, and the client
  connection is closed after what it was sent (no half-open tunnel). The upstream's FIN
  closes both the same way.
- A tunnel with no bytes either way for the stream idle timeout (the route's `idle_timeout`,
  else the connection manager's `stream_idle_timeout`) is closed, as Envoy closes it.

Counters (Envoy's): every upgrade a route allows (CONNECT or WebSocket) counts in
`http.PREFIX.downstream_cx_upgrades_total`, whatever the upstream answers, and in
`downstream_cx_upgrades_active` until its stream ends (`counted`); a forbidden one (403) not.

Rules of upgrades (WebSocket): the request reaches the upstream with the Connection and
Upgrade headers the client sent (`upgrade_headers`); an upstream that declines (anything but
101) is answered to the client with its status and headers but no body (`content-length: 0`)
and the connection closes, as Envoy does (`decline_upgrade`); after a 101 the connections
are a `Tunnel` as a CONNECT's are (flow control, half-close, idle timeout).

Theory of operation: the connection manager checks the request (`accept_request`), routes it,
and hands the stream to `serve_connect`; the pool of the chosen host makes the upstream
connection (so connect timeout, TLS, circuit breaker and `upstream_cx_*` stats are the
pool's), and `Tunnel` joins the two connections' byte streams.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from proxy.http.attempt import Attempt
from proxy.http.client import RawHeaders, UpstreamConnection, decode_headers
from proxy.http.downstream import DownstreamConnection
from proxy.http.headers import Headers
from proxy.http.response import encode_head, http_date
from proxy.router.route import ForwardAction
from proxy.upstream.host import Host
from proxy.upstream.pool import ConnectFailure

if TYPE_CHECKING:
    from proxy.http.connection_manager import HttpConnectionManager
    from proxy.http.stream import Stream
    from proxy.router.route_table import RouteSelection
    from proxy.stats import HttpStats

CONNECT_FAILED = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
CONNECTION_TERMINATED = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
PROTOCOL_ERROR = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s/?#@\[\]:]+):\d{1,5}")


def upgrade_headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    """The client's Connection and Upgrade headers, kept for the upstream before the
    connection manager drops hop-by-hop headers."""
    return tuple((name, value) for name, value in headers.items if name in ("connection", "upgrade"))


def decline_upgrade(manager: HttpConnectionManager, stream: Stream, attempt: Attempt) -> None:
    """The upstream answered an upgrade with something else than 101."""
    attempt.abandon()
    headers = attempt.headers
    assert headers is not None
    headers.remove("transfer-encoding")
    headers.remove("connection")
    for mutation in stream.response_mutations:
        mutation.apply(headers, stream)
    manager._server_headers(headers, stream)
    headers.set("connection", "close")
    headers.set("content-length", "0")
    manager.stats.count_status(attempt.status)
    stream.status = attempt.status
    stream.committed = True
    stream.conn.write(encode_head(attempt.status, headers))
    stream.conn.response_done(False)


async def counted(stats: HttpStats, tunnel: Coroutine[Any, Any, None]) -> None:
    """Serve an upgrade a route allowed, counted as Envoy counts it: in
    `downstream_cx_upgrades_total` whatever the upstream answers (a declined or failed one
    too), in `downstream_cx_upgrades_active` until its stream ends."""
    stats.downstream_cx_upgrades_total += 1
    stats.downstream_cx_upgrades_active += 1
    try:
        await tunnel
    finally:
        stats.downstream_cx_upgrades_active -= 1


def accept_request(stream: Stream) -> bool:
    """Check a CONNECT's head (False: answer 400) and make its target its authority."""
    if _AUTHORITY.fullmatch(stream.target) is None or stream.has_body:
        return False
    stream.headers.set("host", stream.target)
    stream.keep_alive = False   # what follows is tunnel payload, never a next request
    return True


class Tunnel:
    """Raw bytes between a client connection and an upstream one, with flow control both
    ways, until either closes or (`idle` > 0) no byte has passed for `idle` seconds."""

    def __init__(self, client: DownstreamConnection, upstream: UpstreamConnection, idle: float = 0.0) -> None:
        self.client = client
        self.upstream = upstream
        self.idle = idle
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._active_at = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None

    def start(self, upstream_early: list[bytes]) -> None:
        client, upstream = self.client, self.upstream
        upstream.tunnel = self._to_client
        client.tunnel = self._to_upstream
        upstream.on_lost = self._finish
        client.on_lost = self._finish
        client.on_drain = upstream.resume_reading
        for data in upstream_early:
            self._to_client(data)
        for data in client.early_tunnel_data:
            self._to_upstream(data)
        client.early_tunnel_data.clear()
        if client.closed or upstream.closed or client.half_closed:
            self._finish()
        elif self.idle > 0:
            self._idle_timer = self._loop.call_later(self.idle, self._check_idle)

    async def run(self) -> None:
        """Until either side closes; then the other closes too, after what it was sent."""
        try:
            await self.closed
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self.client.on_drain = None
            transport = self.upstream.transport
            if transport is not None and not transport.is_closing():
                # The FIN first: a socket closed with bytes unread (the upstream's answer to
                # the last bytes, in flight) sends an RST instead, and the upstream would see
                # a reset where Envoy gives it the FIN after every byte.
                if transport.can_write_eof():
                    transport.write_eof()
                transport.close()
            self.client.response_done(False)   # closes, after what it was sent

    def _check_idle(self) -> None:
        """One timer per tunnel, moved on lazily: bytes only note the time they passed."""
        quiet = self._loop.time() - self._active_at
        if quiet >= self.idle:
            self._finish()
        else:
            self._idle_timer = self._loop.call_later(self.idle - quiet, self._check_idle)

    def _to_client(self, data: bytes) -> None:
        self._active_at = self._loop.time()
        client = self.client
        client.write(data)
        if client.write_paused:   # resumed by the client's on_drain
            self.upstream.pause_reading()

    def _to_upstream(self, data: bytes) -> None:
        self._active_at = self._loop.time()
        upstream = self.upstream
        upstream.write(data)
        transport = upstream.transport
        if transport is not None and transport.get_write_buffer_size() > _HIGH_WATER:
            client_transport = self.client.transport
            if client_transport is not None:
                client_transport.pause_reading()
                asyncio.get_running_loop().call_later(_DRAIN_CHECK, self._resume_client)

    def _resume_client(self) -> None:
        """The upstream connection has no drain callback: look again until it drained."""
        transport = self.upstream.transport
        client_transport = self.client.transport
        if transport is None or client_transport is None or self.closed.done():
            return
        if transport.get_write_buffer_size() > _HIGH_WATER // 4:
            asyncio.get_running_loop().call_later(_DRAIN_CHECK, self._resume_client)
        else:
            client_transport.resume_reading()

    def _finish(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


_HIGH_WATER = 256 * 1024
_DRAIN_CHECK = 0.005


class _PassthroughAnswer:
    """The upstream's answer to a passed-through CONNECT (a ResponseSink): its head, and the
    bytes after it — tunnel payload after a 2xx, the body of any other answer. From a 2xx
    head on, the connection's bytes are kept raw (never parsed as a next response) until
    the tunnel takes them."""

    def __init__(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        self.status = 0
        self.headers: RawHeaders = []
        self.after_head: list[bytes] = []
        self.done = False
        self.reset = False
        self.changed = asyncio.get_running_loop().create_future()

    def _wake(self) -> None:
        if not self.changed.done():
            self.changed.set_result(None)

    def on_response_headers(self, status: int, headers: RawHeaders, keep_alive: bool) -> None:
        self.status, self.headers = status, headers
        if 200 <= status < 300:
            self.connection.tunnel = self.after_head.append
        self._wake()

    def on_response_body(self, chunk: bytes) -> None:
        self.after_head.append(chunk)

    def on_response_complete(self) -> None:
        self.done = True
        self._wake()

    def on_upstream_reset(self) -> None:
        self.reset = True
        self._wake()

    def on_read_end(self) -> None:
        pass

    async def wait(self) -> None:
        await self.changed
        self.changed = asyncio.get_running_loop().create_future()


async def serve_connect(manager: HttpConnectionManager, stream: Stream, selection: RouteSelection,
                        action: ForwardAction) -> None:
    """Serve a routed CONNECT: terminate it or pass it through, then tunnel."""
    reply = manager.reply
    stream.selection = selection
    cluster = manager.clusters.get(action.pick_cluster(manager.rng.random()))
    if cluster is None:
        manager.stats.no_cluster += 1
        stream.flags = "NC"
        reply(stream, 503, b"", keep_alive=False)
        return
    stream.cluster = cluster
    conn = stream.conn
    host = cluster.original_destination(conn.local) if cluster.original_dst else cluster.choose(None)
    if host is None:
        cluster.stats.upstream_cx_none_healthy += 1
        stream.flags = "UH"
        reply(stream, 503, b"no healthy upstream", keep_alive=False)
        return
    stream.upstream = host.key
    if not cluster.breaker.try_open_connection():
        stream.flags = "UO"
        reply(stream, 503, b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
              keep_alive=False, extra=(("x-envoy-overloaded", "true"),))
        return
    cluster.stats.upstream_rq_total += 1
    try:
        upstream = await cluster.pool(host).connect()
    except ConnectFailure:
        cluster.breaker.close_connection()
        cluster.record_outcome(host, None)
        stream.flags = "UF"
        reply(stream, 503, CONNECT_FAILED, keep_alive=False)
        return
    if conn.closed:
        upstream.abort()
        return
    if action.connect_terminate:
        cluster.record_outcome(host, 200)
        headers = Headers([("date", http_date())])
        for mutation in stream.response_mutations:
            mutation.apply(headers, stream)
        manager._server_headers(headers, stream)
        _start_tunnel(manager, stream, 200, headers)
        tunnel = Tunnel(conn, upstream, stream.plan.idle)
        tunnel.start([])
        await tunnel.run()
        return
    await _pass_through(manager, stream, host, upstream)


async def _pass_through(manager: HttpConnectionManager, stream: Stream, host: Host,
                        upstream: UpstreamConnection) -> None:
    cluster = stream.cluster
    conn = stream.conn
    table = manager.route_table
    assert table is not None
    for mutation in table.request_mutations(stream.selection):
        mutation.apply(stream.headers, stream)
    answer = _PassthroughAnswer(upstream)
    head = f"CONNECT {stream.target} HTTP/1.1\r\n".encode("latin-1") + b"".join(
        f"{name}: {value}\r\n".encode("latin-1") for name, value in stream.headers.items) + b"\r\n"
    upstream.start(answer, head)
    while not answer.status and not answer.reset:
        if conn.closed:
            upstream.abort()
            return
        await answer.wait()
    if not answer.status:   # Envoy: garbage from the upstream is its fault (502)
        cluster.record_outcome(host, None)
        protocol_error = upstream.protocol_error
        upstream.abort()
        manager.reply(stream, *((502, PROTOCOL_ERROR) if protocol_error else (503, CONNECTION_TERMINATED)),
                       keep_alive=False)
        return
    cluster.record_outcome(host, answer.status)
    headers = decode_headers(answer.headers)
    for mutation in stream.response_mutations:
        mutation.apply(headers, stream)
    manager._server_headers(headers, stream)
    if 200 <= answer.status < 300:   # its head goes to the client as it came (Envoy keeps its framing)
        _start_tunnel(manager, stream, answer.status, headers)
        tunnel = Tunnel(conn, upstream, stream.plan.idle)
        tunnel.start(answer.after_head)
        await tunnel.run()
        return
    # Not accepted: an ordinary answer, then the connection closes.
    while not answer.done and not answer.reset:
        await answer.wait()
    upstream.abort()
    body = b"".join(answer.after_head)
    headers.remove("transfer-encoding")
    headers.set("content-length", str(len(body)))
    headers.set("connection", "close")
    manager.stats.count_status(answer.status)
    stream.status = answer.status
    stream.committed = True
    stream.bytes_sent = len(body)
    conn.write(encode_head(answer.status, headers) + body)
    conn.response_done(False)


def _start_tunnel(manager: HttpConnectionManager, stream: Stream, status: int, headers: Headers) -> None:
    """The response head that opens the tunnel."""
    manager.stats.count_status(status)
    stream.status = status
    stream.committed = True
    stream.conn.write(encode_head(status, headers))
