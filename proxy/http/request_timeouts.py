"""Per-connection timers of the HTTP connection manager: slowloris guards and the maximum
connection duration.

Rules (Envoy 1.40, HttpConnectionManager):
- `request_headers_timeout`: from a request's first byte until its last header byte; when
  it fires the client gets 408 "request header timeout" (`downstream_rq_header_timeout`);
- `request_timeout`: from a request's first byte until it is wholly received or its response
  has begun; when it fires the client gets 408 "request timeout" (`downstream_rq_timeout`)
  and an upstream attempt in progress is dropped;
- after either 408 the connection closes (the request was not wholly read);
- `common_http_protocol_options.max_connection_duration`: from the connection's accept; when
  it is reached the connection drains (proxy/http/connection_drain.py).

Theory of operation: these timers cost a connection that sets none of them nothing: the
listener makes a `TimedDownstreamConnection` only when the connection manager configures
one. Only this class asks the parser for `on_message_begin` (a request's first byte).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.http.connection_drain import start_drain
from proxy.http.downstream import DownstreamConnection

if TYPE_CHECKING:
    from proxy.http.connection_manager import HttpConnectionManager

HEADER_TIMEOUT_BODY = b"request header timeout"
REQUEST_TIMEOUT_BODY = b"request timeout"


class TimedDownstreamConnection(DownstreamConnection):
    """A downstream connection whose connection manager sets request or connection timers."""

    def __init__(self, manager: HttpConnectionManager) -> None:
        super().__init__(manager)
        self._head_timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None
        self._duration_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        duration = self.manager.config.max_connection_duration
        if duration > 0:
            self._duration_timer = self.manager.loop.call_later(duration, self._duration_reached)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._request_timer, self._duration_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    # httptools callbacks

    def on_message_begin(self) -> None:
        config = self.manager.config
        loop = self.manager.loop
        if config.request_headers_timeout > 0:
            self._head_timer = loop.call_later(config.request_headers_timeout, self._expired,
                                               HEADER_TIMEOUT_BODY)
        if config.request_timeout > 0:
            self._request_timer = loop.call_later(config.request_timeout, self._expired,
                                                  REQUEST_TIMEOUT_BODY)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
        super().on_message_complete()

    # timers

    def _expired(self, body: bytes) -> None:
        if body is HEADER_TIMEOUT_BODY:
            self._head_timer = None
        else:
            self._request_timer = None
        if self.closed or self._error:
            return
        stream = self.incomplete_request()
        if stream is None and self.active is not None:
            return   # Envoy reads no pipelined request before it answers the one in flight
        if stream is not None and (stream.committed or stream is not self.active):
            return   # its response has begun (or it waits behind another): Envoy's timer is off
        manager = self.manager
        stats = manager.stats
        if body is HEADER_TIMEOUT_BODY:
            stats.downstream_rq_header_timeout += 1
        else:
            stats.downstream_rq_timeout += 1
        stats.count_status(408)
        self._error = 408   # nothing more is read; the connection closes after this reply
        if stream is None:   # the head is still arriving: no stream was served yet
            stats.downstream_rq_total += 1
            stats.downstream_rq_completed += 1
            self.write(manager.local_head(408, body, None, close=True) + body)
            self.close()
            return
        stream.status = 408
        stream.committed = True
        stream.bytes_sent = len(body)
        self.write(manager.local_head(408, body, stream, close=True) + body)
        stream.body.fail()   # the router stops streaming it and drops its attempt
        self.close()

    def _duration_reached(self) -> None:
        self._duration_timer = None
        if self.closed:
            return
        self.manager.stats.downstream_cx_max_duration_reached += 1
        if self.never_sent_a_byte():
            self.close(delay=False)   # nothing to drain (Envoy: no codec yet)
        else:
            start_drain(self)
