"""Reaching into a container's network namespace from the agent.

A netlink socket belongs to the namespace it was created in. So instead of
forking a helper per call (what pyroute2 does for `netns=`), the calling thread
briefly joins the target namespace with setns(2), creates the socket, and goes
back; the socket then talks to the container's namespace for its whole life.
setns(CLONE_NEWNET) moves only the calling thread, and it returns to its own
namespace before anything else runs on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from collections.abc import Iterator

from pyroute2 import IPRoute

from cni.errors import CniError, ErrorCode

CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)


def join_netns(fd: int) -> None:
    """Moves the calling thread (only it) into the network namespace `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def open_netns(path: str) -> Iterator[int]:
    """An fd on the namespace at `path`; code 3 when there is no such namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CniError(ErrorCode.UNKNOWN_CONTAINER, f"network namespace {path} does not exist") from None
    except OSError as exc:
        raise CniError(ErrorCode.UNKNOWN_CONTAINER, f"cannot open network namespace {path}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def netlink_socket_in(netns_fd: int, path: str = "") -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            join_netns(netns_fd)
        except OSError as exc:
            code = ErrorCode.UNKNOWN_CONTAINER if exc.errno == errno.EINVAL else ErrorCode.IO_FAILURE
            raise CniError(code, f"{path or 'fd ' + str(netns_fd)} is not a usable network namespace: {exc.strerror}") from None
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
        finally:
            join_netns(own)
    finally:
        os.close(own)


@contextlib.contextmanager
def netlink_in(netns_fd: int, path: str = "") -> Iterator[IPRoute]:
    """An IPRoute handle bound to the namespace `netns_fd`."""
    sock = netlink_socket_in(netns_fd, path)
    ipr = IPRoute(use_socket=sock, groups=0)
    try:
        yield ipr
    finally:
        ipr.close()
        sock.close()
