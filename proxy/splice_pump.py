"""Zero-copy forwarding of one direction of a plaintext TCP relay: splice(2) moves the bytes
from the source socket into a pipe, then from the pipe into the destination socket, so they
never enter Python (no bytes object per read, no copy in or out of user space).

Rules:
- A pump owns its source's reading and its destination's writing: the transports must no
  longer read the source (paused) nor hold unsent bytes for the destination when it starts.
- The pipe is emptied into the destination before the source is read again. So a full
  destination stops the reading (the sender is held back by TCP's window, as Envoy's
  watermarks would), and the end of stream (a splice that moves 0 bytes) is seen only once
  everything before it was sent.
- `moved(n)` is told every n bytes taken from the source; `ended()` the source's end of
  stream; `failed(error)` a socket error on either side (reset, broken pipe). The pump does
  nothing more after ended or failed.
- The destination keeps at most NOTSENT_LOWAT bytes queued but not yet sent
  (TCP_NOTSENT_LOWAT): beyond that it reports full and the pump waits. Without it a splice
  queues up to a pipe's worth, which TCP sends later, as acknowledgements arrive, in
  the context of whoever processes them (on loopback, the receiving process's core): the
  relay's sending work lands on its peers. With it, the pump's own core sends (on the
  benchmark's loopback, the iperf3 processes' CPU per GB fell to Envoy's, from 1.4x).
- It works on duplicates of the sockets' descriptors registered with the loop (add_reader,
  add_writer), as the transports keep theirs; `stop()` unregisters and closes them, and must
  come before the transports close their sockets, else a duplicate would hold a socket open.

A pump that cannot be made (no descriptors left) raises OSError having opened nothing. Only
Linux has splice (`AVAILABLE`); elsewhere the relay stays on its transports.

Measured against the alternatives (bench/proxy_tcp.py --only bulk, shared 2-core machine):
copying through the transports instead, as Envoy does, cost the proxy 1.1-1.2x the CPU per
GB for the same load CPU per GB; NOTSENT_LOWAT at 64 KiB, 256 KiB or 1 MiB, a 256 KiB pipe,
and reading again at once after a pipe drained whole (up to 4 times) gained nothing beyond
the sittings' noise (about ±15% in the Tulle/Envoy ratio), so the settings stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable

AVAILABLE = hasattr(os, "splice")
PIPE_SIZE = 1 << 20   # at most this much in flight per direction (Envoy's default buffer limit)
NOTSENT_LOWAT = 128 * 1024   # unsent bytes a destination may hold (see the rules)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0


class SplicePump:
    __slots__ = ("_destination", "_ended", "_failed", "_in_pipe", "_loop", "_moved", "_pipe_in",
                 "_pipe_out", "_running", "_source", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, source: int, destination: int,
                 moved: Callable[[int], None], ended: Callable[[], None],
                 failed: Callable[[OSError], None]) -> None:
        self._loop = loop
        opened: list[int] = []
        try:   # out of descriptors (EMFILE): nothing is left open, the caller keeps its transports
            opened.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
            opened.append(os.dup(source))
            opened.append(os.dup(destination))
        except OSError:
            for descriptor in opened:
                os.close(descriptor)
            raise
        self._pipe_out, self._pipe_in, self._source, self._destination = opened
        with contextlib.suppress(OSError):   # a smaller pipe only means more wakeups
            fcntl.fcntl(self._pipe_in, _F_SETPIPE_SZ, PIPE_SIZE)
        destination_socket = socket.socket(fileno=self._destination)
        try:
            destination_socket.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        except OSError:   # not TCP (a unix socket): nothing is sent later
            pass
        finally:
            destination_socket.detach()   # the descriptor stays the pump's
        self._in_pipe = 0
        self._waiting = False   # for the destination to drain (the source is not read meanwhile)
        self._running = True
        self._moved = moved
        self._ended = ended
        self._failed = failed
        loop.add_reader(self._source, self._readable)

    def _readable(self) -> None:
        try:
            size = os.splice(self._source, self._pipe_in, PIPE_SIZE, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(error)
            return
        if not size:
            self._loop.remove_reader(self._source)
            self._ended()
            return
        self._in_pipe = size
        self._moved(size)
        self._drain()

    def _drain(self) -> None:
        try:
            while self._in_pipe:
                self._in_pipe -= os.splice(self._pipe_out, self._destination, self._in_pipe, flags=_FLAGS)
        except BlockingIOError:
            if not self._waiting:
                self._waiting = True
                self._loop.remove_reader(self._source)
                self._loop.add_writer(self._destination, self._drain)
            return
        except OSError as error:
            self._fail(error)
            return
        if self._waiting:
            self._waiting = False
            self._loop.remove_writer(self._destination)
            self._loop.add_reader(self._source, self._readable)

    def _fail(self, error: OSError) -> None:
        self.stop()
        self._failed(error)

    def stop(self) -> None:
        """Unregister and close the descriptors (bytes still in the pipe are dropped)."""
        if not self._running:
            return
        self._running = False
        self._loop.remove_reader(self._source)
        self._loop.remove_writer(self._destination)
        for descriptor in (self._source, self._destination, self._pipe_in, self._pipe_out):
            os.close(descriptor)
