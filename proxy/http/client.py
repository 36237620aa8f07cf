"""The HTTP/1.1 client side of one upstream connection (httptools response parser).

Theory of operation: the pool owns connections; the router borrows one per attempt, sends the
request head and body through `write`, and hands a `ResponseSink` that receives the parsed
response as events: headers, body chunks, completion, or a reset (the connection closed or
failed before the response completed; a close inside a response head or a framed body is
a protocol error, as Envoy finishes its parser at a close). A connection is reusable when the response completed,
both sides allow keep-alive and the request body was fully sent. Interim 1xx responses
(other than 101) are skipped. A response without Content-Length or chunked framing ends
when the upstream closes: that close completes it instead of resetting it. A response head
whose header names and values add up to more than the cluster's max_response_headers_kb
(Envoy's default 60 KiB) is a protocol error. To keep that free per response, the bytes read
while in a head are summed per read, and the headers measured only when those exceed the
limit (the raw bytes are never fewer than the names and values).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import httptools

from proxy.http.headers import Headers

RawHeaders = list[tuple[bytes, bytes]]   # (lower-case name, value) as received
_FRAMING = (b"content-length", b"transfer-encoding")
# Envoy's response code details of a response cut after its head went out
CUT_BY_PROTOCOL_ERROR = "upstream_reset_after_response_started{protocol_error}"
CUT_BY_TERMINATION = "upstream_reset_after_response_started{connection_termination}"


def decode_headers(raw: RawHeaders) -> Headers:
    return Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw])


class ResponseSink(Protocol):
    def on_response_headers(self, status: int, headers: RawHeaders, keep_alive: bool) -> None: ...

    def on_response_body(self, chunk: bytes) -> None: ...

    def on_response_complete(self) -> None: ...

    def on_upstream_reset(self) -> None: ...

    def on_read_end(self) -> None:
        """Everything read so far is parsed (a sink may batch its writes until then)."""


class ConnectionOwner(Protocol):
    buffer_limit: int | None   # unsent bytes before the connection pauses its writer (None: uvloop's)
    max_response_headers_bytes: int

    def connection_closed(self, connection: UpstreamConnection) -> None: ...


class _NoCallbacks:
    """Whom the parser of a closed connection would call back: no one (it is never fed)."""


# A connection's parser holds the connection's bound callbacks: a reference cycle that
# would leave every closed connection, with its transport and TLS state, to the cyclic
# collector. A closed connection swaps its parser for this one, so reference counting
# frees it at once.
_CLOSED_PARSER = httptools.HttpResponseParser(_NoCallbacks())


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_close_delimited", "_head_bytes", "_head_limit", "_headers", "_in_response", "_interim", "_owner",
                 "_parser", "closed", "closed_here", "early_tunnel_data", "keep_alive", "on_lost",
                 "protocol_error",
                 "requests", "rx_bytes", "sink", "transport", "tunnel", "tx_bytes", "upgraded")

    def __init__(self, owner: ConnectionOwner) -> None:
        self._owner = owner
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self._headers: RawHeaders = []
        self._head_bytes = 0   # read while in a head (an upper bound of its headers' size)
        self._head_limit = owner.max_response_headers_bytes
        self._in_response = False
        self._interim = False
        self._close_delimited = False
        self.keep_alive = True
        self.closed = False
        self.closed_here = False   # at its end: whether Tulle closed it (else the upstream did)
        self.protocol_error = False   # the upstream sent something that is not HTTP/1.1
        self.requests = 0
        # bytes read and written: the pool adds them to upstream_cx_rx/tx_bytes_total when the
        # stats are read or the connection closes (a native add, not a stats one)
        self.rx_bytes = 0
        self.tx_bytes = 0
        # after a 101 response: raw bytes go to `tunnel`; bytes before it are kept
        self.tunnel: Callable[[bytes], None] | None = None
        self.upgraded = False
        self.early_tunnel_data: list[bytes] = []
        self.on_lost: Callable[[], None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._owner.buffer_limit:
            transport.set_write_buffer_limits(high=self._owner.buffer_limit)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        if self.tunnel is not None:
            self.tunnel(data)
            return
        head_bytes = 0
        if not self._in_response:
            head_bytes = self._head_bytes = self._head_bytes + len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self.upgraded = True
            if offset < len(data):
                self.early_tunnel_data.append(data[offset:])
        except httptools.HttpParserError:
            self._fail()
            return
        if head_bytes > self._head_limit and not self._in_response and self._head_bytes > self._head_limit + 16 * 1024:
            self._fail()   # a head that does not end (the headers so far are not measured)
            return
        sink = self.sink
        if sink is not None:
            sink.on_read_end()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_here = self.closed
        self.closed = True
        self._parser = _CLOSED_PARSER   # breaks the parser's cycle (above)
        self.keep_alive = False
        if self.on_lost is not None:
            self.on_lost()
        sink = self.sink
        if sink is not None:
            self.sink = None
            if self._in_response and self._close_delimited:
                sink.on_response_complete()
            else:
                # Envoy's codec finishes its parser at the close: a close inside a response
                # head (502) or inside a framed body (a cut body) is a protocol error (UPE);
                # only a close before any byte of a response is a reset (503, UC).
                if self._in_response or self._head_bytes:
                    self.protocol_error = True
                sink.on_upstream_reset()
        self._owner.connection_closed(self)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # used by the router

    def start(self, sink: ResponseSink, head: bytes) -> None:
        self.sink = sink
        self._in_response = False
        assert self.transport is not None
        self.tx_bytes += len(head)
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.tx_bytes += len(data)
            self.transport.write(data)

    def close(self) -> None:
        """End a connection with no exchange in flight: over TLS the upstream gets
        close_notify first, as Envoy's TLS socket sends it before closing (abort() would
        not); bytes still unsent mean something broke, and abort() it is."""
        transport = self.transport
        if transport is None or self.closed or transport.get_write_buffer_size():
            self.abort()
            return
        self.sink = None
        self.keep_alive = False
        self.closed = True
        transport.close()

    def abort(self) -> None:
        """Give up the exchange in flight: the connection cannot be reused."""
        self.sink = None
        self.keep_alive = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # httptools callbacks

    # (No on_message_begin: the head's state is reset when a head completes, one callback
    # less per response; `_in_response` only matters once a head is complete.)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        headers = self._headers
        self._headers = []
        limit = self._head_limit
        if self._head_bytes > limit and sum(len(name) + len(value) for name, value in headers) > limit:
            raise httptools.HttpParserError("response headers too large")
        self._head_bytes = 0
        if 100 <= status < 200 and status != 101:
            self._interim = True
            return
        self._interim = False
        self._in_response = True
        # llhttp keeps a connection alive only for a framed response (a length, chunked, or a
        # status without a body), so only a response it closes needs a look at its names.
        keep_alive = self.keep_alive = parser.should_keep_alive()
        self._close_delimited = (not keep_alive and status not in (101, 204, 304)
                                 and not any(name in _FRAMING for name, _ in headers))
        sink = self.sink
        if sink is not None:
            sink.on_response_headers(status, headers, keep_alive)

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._in_response = False
        sink = self.sink
        self.sink = None
        if sink is not None:
            sink.on_response_complete()

    def _fail(self) -> None:
        """Garbage from the upstream: reset the exchange, never reuse the connection."""
        sink = self.sink
        self.sink = None
        self.keep_alive = False
        self.protocol_error = True
        if self.transport is not None:
            self.transport.abort()
        if sink is not None:
            sink.on_upstream_reset()
