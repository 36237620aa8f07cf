"""The destination a captured connection was originally sent to.

When nftables redirects a connection to the sidecar (nat REDIRECT), the socket the
sidecar accepts carries the sidecar's own address; conntrack remembers the original
one, and `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6) returns it.
"""

from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; the same number for IPv6 at SOL_IPV6


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """(address, port) before redirection; raises OSError for a connection not redirected."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port
