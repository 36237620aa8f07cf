"""Writing HTTP/1.1 response heads and local replies the way Envoy does.

Rules: status line with the standard reason phrase; header names lower-case; a local reply
(404 no route, 503 overflow, 504 timeout, direct responses, redirects) carries
content-length, `content-type: text/plain` when it has a body, then date and server; the
`date` value is cached per second (formatting it per request would cost more than the rest).
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from proxy.http.headers import Headers

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_REASONS[425] = "Too Early"
STATUS_LINES: dict[int, bytes] = {}   # status -> status line, as used

_date_second = 0
_date_value = ""
_date_line = b""


def http_date() -> str:
    global _date_second, _date_value, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = formatdate(now, usegmt=True)
        _date_line = f"date: {_date_value}\r\n".encode()
    return _date_value


def date_line() -> bytes:
    """`date: ...\r\n`, as a header line."""
    http_date()
    return _date_line


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        reason = _REASONS.get(status, "Unknown")
        line = STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode()
    return line


def encode_head(status: int, headers: Headers) -> bytes:
    return status_line(status) + "".join(
        [f"{name}: {value}\r\n" for name, value in headers.items]).encode("latin-1") + b"\r\n"


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
# The chunked framing the HTTP/1 codec gives a response the upstream did not frame: not a
# header of Envoy's header map, so %RESP(..)% does not see it (the access log knows this very
# object among a head's parts). A `connection: close` the head ends with is one, as Envoy's
# connection manager sets it.
CODEC_CHUNKED = b"transfer-encoding: chunked\r\n"
