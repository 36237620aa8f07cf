"""The link between the leader worker and each follower under `--concurrency N`.

Theory of operation: the parent process makes one unix socketpair per follower before it
forks the workers. Worker 0, the leader, holds the only ADS stream: every xDS response it
has applied (validated whole, then swapped in) goes to every follower as the same
`(type_url, resources)`, and each follower applies it in arrival order on its own event
loop — so each worker's swap is atomic, and all workers converge on the leader's accepted
config (a response the leader NACKs never reaches them). The other way, each follower sends
a snapshot of its stats every SNAPSHOT_INTERVAL seconds; the leader's admin /stats adds the
latest snapshot of every follower to its own values (proxy/stats.py).

Wire format (the sans-IO part, `encode_frame` and `FrameReader`): a frame is a kind byte,
a 4-byte big-endian length and the payload. Kinds: `x` an xDS update (a serialized
DiscoveryResponse carrying type_url and resources), `s` a stats snapshot (JSON list of
[name, kind, scope, tag, stat, value, is_gauge]).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Callable, Iterator, Sequence

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.any_pb2 import Any

from proxy.stats import StatRow

log = logging.getLogger("tulle.proxy.workers")

XDS = b"x"
STATS = b"s"
SNAPSHOT_INTERVAL = 0.25
_HEADER = struct.Struct(">cI")



def encode_frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


class FrameReader:
    """Frames out of a byte stream, in order, however the stream was cut."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(buffer)
            end = _HEADER.size + length
            if len(buffer) < end:
                return
            payload = bytes(buffer[_HEADER.size:end])
            del buffer[:end]
            yield kind, payload


def encode_update(type_url: str, resources: Sequence[Any]) -> bytes:
    return encode_frame(XDS, DiscoveryResponse(type_url=type_url, resources=list(resources))
                        .SerializeToString())


def decode_update(payload: bytes) -> tuple[str, list[Any]]:
    message = DiscoveryResponse.FromString(payload)
    return message.type_url, list(message.resources)


def encode_stats(rows: Sequence[StatRow]) -> bytes:
    return encode_frame(STATS, json.dumps(rows).encode())


def decode_stats(payload: bytes) -> list[StatRow]:
    return [tuple(row) for row in json.loads(payload)]


class LinkProtocol(asyncio.Protocol):
    """One end of a socketpair: frames in go to `on_frame`, `send` writes one."""

    def __init__(self, on_frame: Callable[[bytes, bytes], None]) -> None:
        self._on_frame = on_frame
        self._reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for kind, payload in self._reader.feed(data):
            self._on_frame(kind, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame)


async def open_link(sock: socket.socket, on_frame: Callable[[bytes, bytes], None]) -> LinkProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.connect_accepted_socket(lambda: LinkProtocol(on_frame), sock=sock)
    return protocol
