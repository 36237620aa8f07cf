"""The TLS inspector: tells a TLS ClientHello from plaintext by a connection's first
bytes, so that a PERMISSIVE inbound port serves both (Envoy's tls_inspector).

A TLS record starts with content type 22 (handshake) and a legacy version 3.x; the
first handshake message of a client is ClientHello (type 1). Plaintext HTTP starts
with a method token, which never begins with byte 22.
"""

from __future__ import annotations

from enum import Enum

HANDSHAKE = 0x16
CLIENT_HELLO = 0x01
NEEDED = 6  # record header (5) + handshake type (1)


class Detected(Enum):
    TLS = "tls"
    PLAINTEXT = "plaintext"
    NEED_MORE = "need_more"


def detect(first_bytes: bytes) -> Detected:
    if not first_bytes:
        return Detected.NEED_MORE
    if first_bytes[0] != HANDSHAKE:
        return Detected.PLAINTEXT
    if len(first_bytes) < NEEDED:
        return Detected.NEED_MORE
    if first_bytes[1] == 3 and first_bytes[5] == CLIENT_HELLO:
        return Detected.TLS
    return Detected.PLAINTEXT
