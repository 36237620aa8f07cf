"""Local replies to gRPC requests, in gRPC's form (Envoy's sendLocalReply for gRPC).

Rules: a request is gRPC when its content-type is application/grpc (or application/grpc+…,
application/grpc;…). The proxy's own answer to it is HTTP 200 with `content-type:
application/grpc`, `grpc-status` and, when the reply had a body, `grpc-message` (that body),
and no body. The status is the one the reply names (a duration timeout is DEADLINE_EXCEEDED,
4), else derived from the HTTP status as Envoy does: 400 INTERNAL, 401 UNAUTHENTICATED, 403
PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, anything else UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Sequence

GRPC_DEADLINE_EXCEEDED = "4"
_FROM_HTTP = {400: "13", 401: "16", 403: "7", 404: "12", 429: "14", 502: "14", 503: "14", 504: "14"}


def grpc_reply_headers(status: int, body: bytes, extra: Sequence[tuple[str, str]],
                       grpc_status: str = "") -> tuple[tuple[str, str], ...]:
    """The headers of the gRPC form of a local reply of `status` with `body`."""
    headers = (*extra, ("content-type", "application/grpc"),
               ("grpc-status", grpc_status or _FROM_HTTP.get(status, "2")))
    if body:
        headers += (("grpc-message", _percent_encoded(body)),)
    return headers


def _percent_encoded(body: bytes) -> str:
    """gRPC's percent-encoding: printable ASCII but '%' stays, every other byte is %XX."""
    return "".join(chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}" for byte in body)
