"""Doing things inside a named network namespace from a process that stays outside it.

setns(2) changes the namespace of the calling *thread* only, and objects bound to a
namespace (sockets, netlink sockets, libnftables contexts) keep it for life. So `run_in`
runs a function on a short-lived thread that first enters the namespace; whatever the
function creates stays in that namespace and is usable from any thread afterwards. The
caller's own threads never change namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def run_in(netns: str, function: Callable[[], T]) -> T:
    """`function()` executed inside `netns` (a name under /run/netns)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into netns {netns}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            result.append(function())
        except BaseException as e:  # re-raised on the caller's thread
            failure.append(e)

    thread = threading.Thread(target=target, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def socket_in(netns: str, kind: socket.SocketKind, proto: int = 0) -> socket.socket:
    """A non-blocking IPv4 socket that lives in `netns`."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind, proto)
        sock.setblocking(False)
        return sock

    return run_in(netns, make)
