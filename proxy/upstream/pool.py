"""Keep-alive connection pool for one upstream host (HTTP/1.1: one request per connection
at a time).

Rules: an idle connection is reused last-in first-out (the warmest one, and idle ones at the
bottom age out); a connection the upstream closed leaves the pool when asyncio reports it;
a closed pool (its host left the cluster, or the cluster was removed) closes its idle
connections at once and each busy one when its exchange completes, so requests in flight
finish and nothing lingers on a host no longer routed to;
connecting is bounded by the cluster's connect_timeout; `upstream_cx_*` stats and the circuit
breaker's connection count follow every open and close. At the breaker's max_connections a
request waits as a pending request (max_pending_requests, else overflow) for a connection
to be released, first come first served. As in Envoy, a request that finds no idle connection
is pending while its new connection is made too (upstream_rq_pending_total counts such requests,
upstream_rq_pending_failure_eject those whose connection failed), and a failed connect is a
destroyed connection (upstream_cx_destroy).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque

from proxy.http.client import UpstreamConnection
from proxy.stats import ClusterStats
from proxy.tls import session_resumption
from proxy.tls.transport_socket import SecretNotReady, TlsTransport
from proxy.upstream.circuit_breaker import CircuitBreaker
from proxy.upstream.host import Host
from proxy.upstream.tcp_keepalive import TcpKeepalive


class ConnectFailure(Exception):
    """The connection to the host could not be made (refused, unreachable, timed out)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# After close_notify, how long a closing TLS connection waits for the upstream's own before it
# is dropped (Envoy does not wait; asyncio's default would hold it for 30 s).
_TLS_SHUTDOWN_TIMEOUT = 1.0


class Overflow(Exception):
    """The circuit breaker refused: too many connections and pending requests."""


class _NeverPooled:
    """The owner of a connection dropped before it joined the pool."""

    buffer_limit: int | None = None
    max_response_headers_bytes = 60 * 1024

    def connection_closed(self, connection: UpstreamConnection) -> None:
        pass


_NEVER_POOLED = _NeverPooled()


class ConnectionPool:
    __slots__ = ("_closed", "_idle", "_loop", "_waiters", "breaker", "buffer_limit", "connect_timeout",
                 "connections", "host", "keepalive", "max_requests_per_connection", "max_response_headers_bytes",
                 "open", "stats", "tls")

    def __init__(self, host: Host, stats: ClusterStats, connect_timeout: float,
                 breaker: CircuitBreaker, max_requests_per_connection: int = 0,
                 tls: TlsTransport | None = None, buffer_limit: int | None = None,
                 keepalive: TcpKeepalive | None = None, max_response_headers_bytes: int = 60 * 1024) -> None:
        self.tls = tls
        self.max_response_headers_bytes = max_response_headers_bytes
        self.keepalive = keepalive         # the cluster's upstream tcp_keepalive
        self.buffer_limit = buffer_limit   # the cluster's per_connection_buffer_limit_bytes
        self.max_requests_per_connection = max_requests_per_connection
        self.host = host
        self.stats = stats
        self.connect_timeout = connect_timeout
        self.breaker = breaker
        self._idle: list[UpstreamConnection] = []
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self._loop = asyncio.get_event_loop()
        self._closed = False
        self.open = 0
        self.connections: set[UpstreamConnection] = set()   # open ones (for their byte counts)

    @property
    def pending(self) -> int:
        """Requests waiting for a connection of this host (admin /clusters rq_pending_active)."""
        return len(self._waiters)

    def take_idle(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle connection, else — as a pending request — a new one, or (at max_connections)
        the next one released."""
        connection = self.take_idle()
        if connection is not None:
            return connection
        # Envoy's pool: a request without an idle connection is pending (max_pending_requests,
        # upstream_rq_pending_*) until it has one, new or released, or its connection fails
        breaker = self.breaker
        stats = self.stats
        if not breaker.try_start_pending():
            raise Overflow()
        stats.upstream_rq_pending_total += 1
        stats.upstream_rq_pending_active += 1
        try:
            while True:
                if breaker.try_open_connection():
                    try:
                        return await self.connect()
                    except ConnectFailure:
                        breaker.close_connection()
                        stats.upstream_rq_pending_failure_eject += 1
                        raise
                    except BaseException:
                        breaker.close_connection()
                        raise
                waiter: asyncio.Future[UpstreamConnection | None] = self._loop.create_future()
                self._waiters.append(waiter)
                try:
                    handed = await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                if handed is not None:
                    return handed
        finally:
            breaker.finish_pending()
            stats.upstream_rq_pending_active -= 1

    async def connect(self) -> UpstreamConnection:
        stats = self.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_http1_total += 1
        self.host.cx_total += 1
        tls = self.tls
        try:
            if tls is None:
                _, connection = await asyncio.wait_for(
                    self._loop.create_connection(lambda: UpstreamConnection(self),
                                                 self.host.address, self.host.port),
                    self.connect_timeout)
            else:
                _, connection = await asyncio.wait_for(
                    self._loop.create_connection(lambda: UpstreamConnection(self),
                                                 self.host.address, self.host.port,
                                                 ssl=tls.context(), server_hostname=tls.config.sni,
                                                 ssl_handshake_timeout=self.connect_timeout,
                                                 ssl_shutdown_timeout=_TLS_SHUTDOWN_TIMEOUT),
                    self.connect_timeout)
        except TimeoutError:
            stats.upstream_cx_connect_fail += 1
            stats.upstream_cx_destroy += 1
            stats.upstream_cx_destroy_local += 1
            self.host.cx_connect_fail += 1
            stats.upstream_cx_connect_timeout += 1
            raise ConnectFailure("connection timeout") from None
        except ssl.SSLError as error:
            stats.upstream_cx_connect_fail += 1
            stats.upstream_cx_destroy += 1
            stats.upstream_cx_destroy_remote += 1
            self.host.cx_connect_fail += 1
            assert tls is not None
            tls.stats.connection_error += 1
            if isinstance(error, ssl.SSLCertVerificationError):
                tls.stats.fail_verify_error += 1
            raise ConnectFailure(f"TLS error: {error.reason}") from None
        except OSError as error:
            stats.upstream_cx_connect_fail += 1
            stats.upstream_cx_destroy += 1
            stats.upstream_cx_destroy_remote += 1
            self.host.cx_connect_fail += 1
            raise ConnectFailure(f"delayed connect error: {error.errno}") from None
        except SecretNotReady as missing:
            stats.upstream_cx_connect_fail += 1
            stats.upstream_cx_destroy += 1
            stats.upstream_cx_destroy_local += 1
            self.host.cx_connect_fail += 1
            raise ConnectFailure(f"TLS secret {missing} not ready") from None
        transport = connection.transport
        assert transport is not None
        if tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if not tls.san_verified(ssl_object):
                stats.upstream_cx_connect_fail += 1
                stats.upstream_cx_destroy += 1
                stats.upstream_cx_destroy_local += 1
                self.host.cx_connect_fail += 1
                connection._owner = _NEVER_POOLED  # the caller releases the breaker slot
                transport.abort()
                raise ConnectFailure("TLS error: certificate SAN verification failed")
            tls.stats.handshake += 1
            if ssl_object is not None and ssl_object.session_reused:
                tls.stats.session_reused += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.keepalive is not None:
                self.keepalive.apply(sock)
        self.open += 1
        self.connections.add(connection)
        stats.upstream_cx_active += 1
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool after a completed exchange, or closed when not reusable (or when
        it has carried max_requests_per_connection requests)."""
        connection.requests += 1
        if self.tls is not None and connection.requests == 1 and connection.transport is not None:
            session_resumption.remember(connection.transport.get_extra_info("ssl_object"))
        limit = self.max_requests_per_connection
        if limit and connection.requests >= limit:
            connection.keep_alive = False
        if connection.keep_alive and not connection.closed and not self._closed:
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(connection)
                    return
            self._idle.append(connection)
        else:
            connection.close()

    def connection_closed(self, connection: UpstreamConnection) -> None:
        self.breaker.close_connection()
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)   # a connection slot is free: connect
                break
        self.open -= 1
        stats = self.stats
        stats.upstream_cx_active -= 1
        stats.upstream_cx_destroy += 1
        if connection.closed_here:
            stats.upstream_cx_destroy_local += 1
        else:
            stats.upstream_cx_destroy_remote += 1
        self.connections.discard(connection)
        closed_bytes = stats.closed_bytes
        closed_bytes[0] += connection.rx_bytes
        closed_bytes[1] += connection.tx_bytes
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
