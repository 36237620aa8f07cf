"""The admin listener's HTTP/1.1 shell around admin/endpoints.py (keep-alive, no pipelining
worries: one small request at a time)."""

from __future__ import annotations

import asyncio

import httptools

from proxy.admin.endpoints import AdminState, handle
from proxy.http.headers import Headers
from proxy.http.response import encode_head, http_date


class AdminConnection(asyncio.Protocol):
    def __init__(self, state: AdminState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        parser = self._parser
        status, content_type, body = handle(self.state, parser.get_method().decode(),
                                            self._url.decode("latin-1"))
        keep_alive = parser.should_keep_alive()
        headers = Headers([("content-type", content_type), ("cache-control", "no-cache, max-age=0"),
                           ("x-content-type-options", "nosniff"),
                           ("content-length", str(len(body))), ("date", http_date()),
                           ("server", "envoy")])
        if not keep_alive:
            headers.add("connection", "close")
        if self.transport is not None:
            self.transport.write(encode_head(status, headers) + body)
            if not keep_alive:
                self.transport.close()
