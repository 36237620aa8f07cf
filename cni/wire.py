"""What the `tulle-cni` executable and tulle-agent share: the CNI versions spoken,
the agent's default socket, and the framing of a call between them.

Stdlib-only and cheap to import on purpose: the plugin process imports nothing
else, so that a CNI call costs an interpreter start and one unix-socket round trip.

Framing: one request per connection. The client sends one JSON object and shuts
down its write side; the agent answers with one JSON object and closes.
Requests are `{"op": OP, ...}`; for a CNI call, `{"op": "cni", "env": {CNI_*},
"stdin": CONFIG}` answered by `{"exit": STATUS, "stdout": TEXT}`, which the
plugin passes through verbatim.
"""

from __future__ import annotations

# The C module under `socket`: importing `socket` itself costs the plugin ~2 ms
# (it builds its enums at import), a tenth of its whole run.
import _socket
import json

# Oldest first. 0.4.0 is the first version with CHECK and prevResult on DEL; GC and
# STATUS arrived in 1.1.0. Older versions have a different result shape (ip4/ip6).
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = SUPPORTED_VERSIONS[-1]

DEFAULT_AGENT_SOCKET = "/run/tulle/agent.sock"
MAX_MESSAGE = 4 << 20


def call(path: str, request: dict[str, object], timeout: float = 120.0) -> dict:
    """One round trip to the agent; OSError when it cannot be reached. (Annotations
    avoid `typing`, whose import alone would cost the plugin ~2 ms.)"""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        size = 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_MESSAGE:
                raise OSError(f"reply from {path} exceeds {MAX_MESSAGE} bytes")
    finally:
        sock.close()
    if not chunks:
        raise OSError(f"{path} closed the connection without a reply")
    reply = json.loads(b"".join(chunks))
    if not isinstance(reply, dict):
        raise ValueError(f"reply from {path} is not a JSON object")
    return reply
