"""The host's own address, as Envoy's local_info has it: the first non-loopback IPv4
address of the first interface that has one (interfaces in index order), else 127.0.0.1.

Envoy appends it to x-forwarded-for instead of a loopback peer's address when
`use_remote_address` is set.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFADDR = 0x8915


def first_non_loopback_ipv4() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe.fileno(), SIOCGIFADDR,
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            address = socket.inet_ntoa(raw[20:24])
            if not address.startswith("127."):
                return address
    return "127.0.0.1"
