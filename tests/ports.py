"""Ports for servers that tests start and must name before they start (Envoy, etcd,
tulle-control), shared by every test module.

A port the kernel picks for `bind(0)` lies in the ephemeral range, so between our probe
and the server's own bind the kernel may hand it to an outgoing connection as its source
port, and the server then fails with "Address already in use". Ports are taken below
that range instead (as ../shared/envoy-diff does), where the kernel never allocates,
at random and never twice in one test run.
"""

from __future__ import annotations

import random
import socket

_LOW, _HIGH = 20000, 32767  # below net.ipv4.ip_local_port_range (32768-60999)
_handed_out: set[int] = set()
_random = random.Random()


def free_port(host: str = "127.0.0.1") -> int:
    for _ in range(1000):
        port = _random.randint(_LOW, _HIGH)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH} on {host}")
