"""What Envoy's tls_inspector reads from a connection's first bytes: whether it is TLS,
and for TLS the server name (SNI) and the ALPN protocols the client offers.

Rules:
- A TLS connection starts with a handshake record (type 22, version 3.x) carrying a
  ClientHello (handshake type 1); anything else is `raw_buffer` (plaintext).
- The ClientHello may span several records; parsing waits for more bytes (NEED_MORE)
  until it is complete, up to MAX_HELLO bytes (Envoy's inspector buffer), after which the
  connection is taken as TLS without SNI or ALPN.
- Extensions read: server_name (0, host_name entries) and
  application_layer_protocol_negotiation (16); malformed ones are ignored, as Envoy does
  (the TLS handshake that follows will fail on its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.tls.inspector import Detected, detect

MAX_HELLO = 64 * 1024
_SERVER_NAME = 0
_ALPN = 16


@dataclass(frozen=True, slots=True)
class Inspection:
    transport_protocol: str                 # "tls" | "raw_buffer"
    server_name: str = ""
    alpn: tuple[str, ...] = ()


NEED_MORE = None


def inspect(data: bytes) -> Inspection | None:
    """The inspection of a connection's first bytes, or None (NEED_MORE) to wait for more."""
    detected = detect(data)
    if detected is Detected.NEED_MORE:
        return NEED_MORE
    if detected is Detected.PLAINTEXT:
        return Inspection("raw_buffer")
    handshake = bytearray()
    offset = 0
    while True:
        if offset + 5 > len(data):
            break
        if data[offset] != 0x16:
            return Inspection("tls")
        length = int.from_bytes(data[offset + 3:offset + 5], "big")
        if offset + 5 + length > len(data):
            handshake += data[offset + 5:]
            break
        handshake += data[offset + 5:offset + 5 + length]
        offset += 5 + length
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            break
    if len(handshake) < 4 or len(handshake) < 4 + int.from_bytes(handshake[1:4], "big"):
        return NEED_MORE if len(data) < MAX_HELLO else Inspection("tls")
    body = bytes(handshake[4:4 + int.from_bytes(handshake[1:4], "big")])
    try:
        return _client_hello(body)
    except (IndexError, ValueError):
        return Inspection("tls")


def _client_hello(body: bytes) -> Inspection:
    position = 2 + 32                                  # legacy_version, random
    position += 1 + body[position]                     # session id
    position += 2 + int.from_bytes(body[position:position + 2], "big")   # cipher suites
    position += 1 + body[position]                     # compression methods
    if position + 2 > len(body):
        return Inspection("tls")
    end = position + 2 + int.from_bytes(body[position:position + 2], "big")
    position += 2
    server_name = ""
    alpn: tuple[str, ...] = ()
    while position + 4 <= end:
        kind = int.from_bytes(body[position:position + 2], "big")
        size = int.from_bytes(body[position + 2:position + 4], "big")
        data = body[position + 4:position + 4 + size]
        position += 4 + size
        if kind == _SERVER_NAME:
            server_name = _server_name(data)
        elif kind == _ALPN:
            alpn = _protocols(data)
    return Inspection("tls", server_name, alpn)


def _server_name(data: bytes) -> str:
    position, end = 2, 2 + int.from_bytes(data[0:2], "big")
    while position + 3 <= end:
        kind, size = data[position], int.from_bytes(data[position + 1:position + 3], "big")
        if kind == 0:
            return data[position + 3:position + 3 + size].decode("ascii").lower()
        position += 3 + size
    return ""


def _protocols(data: bytes) -> tuple[str, ...]:
    position, end = 2, 2 + int.from_bytes(data[0:2], "big")
    protocols = []
    while position < end:
        size = data[position]
        protocols.append(data[position + 1:position + 1 + size].decode("ascii"))
        position += 1 + size
    return tuple(protocols)
