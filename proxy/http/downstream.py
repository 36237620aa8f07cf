"""The HTTP/1.1 server side of one downstream connection (httptools request parser).

Theory of operation: bytes are parsed as they arrive; each request becomes a `Stream`
(head plus a streaming `RequestBody`, proxy/http/stream.py) and requests are served one at
a time in arrival order (pipelined requests wait their turn; reading pauses while one is
queued, so a client cannot make the proxy buffer without bound). The connection manager
serves a request and whoever finishes it calls `response_done`, which closes the connection
or starts the next request. Requests are dispatched after the bytes that completed their head are fully
parsed, so a malformed request whose error sits in the same read never reaches an
upstream.

Rules for bad input (Envoy's statuses): a parse error (bad request line, bad header,
Content-Length with Transfer-Encoding, bad chunk size) is 400; request headers over
`max_request_headers_kb` or more than `max_headers_count` lines are 431; the connection
closes after such a reply. HTTP/1.0 is 426 unless `accept_http_10`. Header names with an
underscore follow `headers_with_underscores_action`: kept (ALLOW), the request refused with
400 (REJECT_REQUEST, a protocol error as in Envoy's codec) or the header dropped (DROP_HEADER).
The idle timeout starts the connection's drain, and with `delayed_close_timeout` a
connection the proxy closes first waits for the client's close (proxy/http/connection_drain.py).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING

import httptools

from proxy.http.connection_drain import delayed_close, start_drain
from proxy.http.headers import Headers
from proxy.http.stream import RequestBody, Stream
from proxy.tls import openssl_direct
from proxy.tls.peer_certificate import PeerCertificate, peer_certificate

if TYPE_CHECKING:
    from proxy.http.connection_manager import HttpConnectionManager

_NAME = itemgetter(0)


def _discard(data: bytes) -> None:
    pass


class _NoCallbacks:
    """Whom the parser of a closed connection would call back: no one (it is never fed)."""


# A connection's parser holds the connection's bound callbacks: a reference cycle that
# would leave every closed connection, with its transport and TLS state, to the cyclic
# collector (~25 objects a TLS connection, scanned and promoted through the generations).
# A closed connection swaps its parser for this one, so reference counting frees it at once;
# except a TLS one where sessions are Python's (no openssl_direct): there OpenSSL drops the
# session of a connection freed without close_notify, and its client's ticket would no
# longer resume (proxy/tls/session_resumption.py, `served`), so that one is left to the collector.
_CLOSED_PARSER = httptools.HttpRequestParser(_NoCallbacks())

class DownstreamConnection(asyncio.Protocol):
    def __init__(self, manager: HttpConnectionManager) -> None:
        self.manager = manager
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        # set by the listener before connection_made: the original destination (SO_ORIGINAL_DST)
        self.destination: tuple[str, int] | None = None
        self.server_name = ""   # set by the listener: the SNI its tls_inspector read
        # set by the listener: its per_connection_buffer_limit_bytes (None: uvloop's limits)
        self.buffer_limit: int | None = None
        self._tls_peer: PeerCertificate | bool | None = False   # False: not read yet
        # bytes read and written: the manager adds them to downstream_cx_rx/tx_bytes_total
        # when the stats are read or the connection closes (a native add, not a stats one)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.closed_here = False   # at its end: whether Tulle closed it (else the client did)
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_size = 0   # the head's URL and header bytes, for max_request_headers_kb
        self._head_bytes = 0
        self._in_head = True
        self._current: Stream | None = None
        self._ready: deque[Stream] = deque()
        self.active: Stream | None = None
        self.closed = False
        self._reading = True
        self._dispatching = False
        self._error: int = 0
        self.tunnel: Callable[[bytes], None] | None = None
        self.upgraded = False
        self.half_closed = False   # the client's FIN came before its tunnel was up
        self.early_tunnel_data: list[bytes] = []
        self.on_lost: Callable[[], None] | None = None
        self.on_drain: Callable[[], None] | None = None
        self.write_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self.draining = False   # responses close the connection (proxy/http/connection_drain.py)

    def tls_peer(self) -> PeerCertificate | None:
        """The verified client certificate (read once per connection); None without TLS."""
        peer = self._tls_peer
        if peer is False:
            transport = self.transport
            peer = self._tls_peer = peer_certificate(
                transport.get_extra_info("ssl_object") if transport is not None else None)
        assert peer is not True
        return peer

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.peer = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
        self.local = (local[0], local[1]) if isinstance(local, tuple) else ("", 0)
        if self.destination is not None:
            self.local = self.destination
        if self.buffer_limit:
            transport.set_write_buffer_limits(high=self.buffer_limit)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.manager.connection_opened(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        if self.tunnel is not None:
            self.tunnel(data)
            return
        if self.upgraded:
            self.early_tunnel_data.append(data)   # until the upstream accepts the upgrade
            return
        if self._error:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.manager.config.max_request_headers_bytes + 16 * 1024:
                self._protocol_error(431)
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Everything after this request's head belongs to the upgraded protocol.
            offset = upgrade.args[0] if upgrade.args else len(data)
            self.upgraded = True
            if offset < len(data):
                self.early_tunnel_data.append(data[offset:])
            if self._current is not None and not self._current.body.done:
                self._current.body.finish()
        except httptools.HttpParserError as error:
            self._protocol_error(426 if "version" in str(error).lower() else 400)
        self._dispatch()

    def eof_received(self) -> bool | None:
        # The client half-closed: serve what is in flight, then close. A tunnel ends (Envoy:
        # the upstream gets the FIN after every byte before it, and the client is closed).
        if self.tunnel is not None:
            return False
        if self.upgraded:
            self.half_closed = True   # the tunnel, once up, ends at once
        return not (self.active is None and not self._ready)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_here = self.closed
        self.closed = True
        transport = self.transport
        if openssl_direct.available() or transport is None or transport.get_extra_info("ssl_object") is None:
            self._parser = _CLOSED_PARSER   # breaks the parser's cycle (above)
        if self.on_lost is not None:
            self.on_lost()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.manager.connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_drain is not None:
            self.on_drain()

    # httptools callbacks

    # (No on_message_begin: the head's state is reset when a head completes, one callback
    # less per request.)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value)
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        config = self.manager.config
        lines = self._headers
        if self._header_size > config.max_request_headers_bytes or len(lines) > config.max_headers_count:
            self._error = 431
            raise httptools.HttpParserError("request headers too large")
        stream = Stream(self, parser.get_method().decode("latin-1"), self._url.decode("latin-1"),
                         parser.get_http_version(), Headers(lines), parser.should_keep_alive(),
                         parser.should_upgrade())
        self._url = b""
        self._headers = []
        self._header_size = 0
        # The names, once (the connection manager's rules test this set, not the list).
        stream.header_names = names = set(map(_NAME, lines))
        if config.headers_with_underscores != "ALLOW" and any("_" in name for name in names):
            codec_stats = self.manager.codec_stats
            if config.headers_with_underscores == "REJECT_REQUEST":
                codec_stats.requests_rejected_with_underscores_in_headers += 1
                self._error = 400
                raise httptools.HttpParserError("header name with an underscore")
            kept = [line for line in lines if "_" not in line[0]]
            codec_stats.dropped_headers_with_underscores += len(lines) - len(kept)
            stream.headers.items = lines = kept
            stream.header_names = names = set(map(_NAME, lines))
        if "content-length" in names or "transfer-encoding" in names or "expect" in names:
            content_length = "0"
            for name, value in lines:   # the framing headers, in one pass
                if name == "content-length":
                    content_length = value
                elif name == "transfer-encoding":
                    stream.chunked = stream.chunked or "chunked" in value.lower()
                elif name == "expect":
                    stream.expect_continue = value.lower() == "100-continue"
            if stream.chunked or content_length != "0":
                stream.has_body = True
                stream.body = RequestBody()
        self._in_head = False
        self._head_bytes = 0
        self._current = stream
        self._ready.append(stream)

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current.body.feed(body)

    def on_message_complete(self) -> None:
        current = self._current
        if current is not None:
            if not current.body.done:   # (a request without a body shares NO_BODY, done)
                current.body.finish()
            self._current = None
        self._in_head = True

    # serving

    def _dispatch(self) -> None:
        # Requests may be served synchronously (local replies), and finishing one dispatches
        # the next: a loop, not recursion, so a long pipeline cannot exhaust the stack.
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.active is None and self._ready and not self.closed:
                stream = self._ready.popleft()
                self.active = stream
                self.manager.serve(self, stream)
        finally:
            self._dispatching = False
        if self._ready and self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def response_done(self, keep_alive: bool) -> None:
        """The response to the active request is fully written."""
        stream = self.active
        self.active = None
        transport = self.transport
        if transport is None or self.closed:
            return
        if not keep_alive or self._error:
            # a client that asked for the close needs no grace period (Envoy closes at once)
            self.close(delay=self._error != 0 or stream is None or stream.keep_alive)
            return
        if not self._reading:
            self._reading = True
            transport.resume_reading()
        if self._ready:
            self._dispatch()
        else:
            self._arm_idle()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.tx_bytes += len(data)
            self.transport.write(data)

    def close(self, delay: bool = True) -> None:
        """Close after what was written; `delay`: with delayed_close_timeout, wait for the
        client's own close first."""
        if self.transport is not None and not self.closed:
            self.closed = True
            if delay and self.manager.config.delayed_close_timeout > 0:
                delayed_close(self, self.transport)   # (proxy/http/connection_drain.py)
            else:
                self.transport.close()

    def discard_input(self) -> None:
        """Closing: whatever the client still sends is read (to see its close) and dropped."""
        self.tunnel = _discard
        self._ready.clear()

    def never_sent_a_byte(self) -> bool:
        """The client has sent nothing on this connection yet (no head parsed or begun)."""
        return not self._head_bytes and self._parser.get_http_version() == "0.0"

    def has_queued_requests(self) -> bool:
        return bool(self._ready)

    def incomplete_request(self) -> Stream | None:
        """The request whose head is complete and body is still arriving (None: none, or
        only a head in progress)."""
        return self._current

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def _arm_idle(self) -> None:
        """Note the start of an idle period; one lazy timer per connection checks it (re-arming
        a timer per request would cost more than the check)."""
        timeout = self.manager.config.idle_timeout
        if timeout <= 0:
            return
        loop = self.manager.loop
        self._idle_since = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._idle_since + timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.closed:
            return
        loop = self.manager.loop
        deadline = self._idle_since + self.manager.config.idle_timeout
        if self.active is None and not self._ready and loop.time() >= deadline:
            self.manager.stats.downstream_cx_idle_timeout += 1
            if self.never_sent_a_byte():
                self.close(delay=False)   # nothing to drain (Envoy: no codec yet)
            else:
                start_drain(self)
            return
        if self.active is not None:
            deadline = loop.time() + self.manager.config.idle_timeout
        self._idle_timer = loop.call_at(deadline, self._idle_expired)

    def _protocol_error(self, status: int) -> None:
        status = self._error or status
        self._error = status
        self.manager.stats.downstream_cx_protocol_error += 1
        # Requests queued before the bad one are still served; the bad one gets the reply.
        current = self._current
        if current is not None:
            if current in self._ready:
                self._ready.remove(current)
            elif not current.body.done:
                current.body.fail()
        self._current = None
        if self.active is None and not self._ready:
            self.manager.protocol_error_reply(self, status)
