"""A cluster's upstream_connection_options.tcp_keepalive, against the real Envoy: the proxy's
socket to the upstream has SO_KEEPALIVE and the configured TCP_KEEPIDLE/INTVL/CNT; without the
option it has no keep-alive. The socket options are read back from the proxy's own socket
(pidfd_getfd duplicates it into the test)."""

from __future__ import annotations

import ctypes
import os
import socket
from pathlib import Path

import pytest

from proxy.bootstrap import parse_bootstrap
from proxy.config_error import ConfigError
from proxy.upstream.tcp_keepalive import TcpKeepalive
from tests.proxy.running import (
    RecordingUpstream,
    bootstrap,
    exchange,
    free_port,
    running_proxy,
    tcp_proxy_bootstrap,
)
from tests.proxy.test_bootstrap import bootstrap as config_bootstrap

_PIDFD_GETFD = 438   # x86_64 and aarch64 share this syscall number
KEEPALIVE = ("    upstream_connection_options:\n"
             "      tcp_keepalive: {keepalive_time: 37, keepalive_interval: 11, keepalive_probes: 4}")


def _socket_inode(peer_port: int) -> int:
    """The inode of the loopback TCP socket whose remote end is `peer_port` (the proxy's side)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == peer_port and fields[3] == "01":   # ESTABLISHED
            return int(fields[9])
    raise AssertionError(f"no connection to port {peer_port}")


def _borrow_socket(inode: int) -> socket.socket:
    """A duplicate of whichever process's descriptor holds socket `inode`."""
    target = f"socket:[{inode}]"
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != target:
                    continue
            except OSError:
                continue
            pidfd = os.pidfd_open(int(pid))
            try:
                copy = libc.syscall(_PIDFD_GETFD, pidfd, int(fd), 0)
                assert copy >= 0, os.strerror(ctypes.get_errno())
            finally:
                os.close(pidfd)
            return socket.socket(fileno=copy)
    raise AssertionError(f"no process holds {target}")


def _upstream_socket_options(kind: str, cluster_extra: str, tmp_path: Path) -> tuple[int, ...]:
    port = free_port()
    upstream = RecordingUpstream()
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, cluster_extra=cluster_extra), port, tmp_path):
            assert exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").startswith(
                b"HTTP/1.1 200")
            with _borrow_socket(_socket_inode(upstream.port)) as sock:
                keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                if not keepalive:
                    return (0,)
                return (keepalive, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
    finally:
        upstream.close()


@pytest.mark.privileged
@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_upstream_sockets_get_the_clusters_tcp_keepalive(kind: str, tmp_path: Path) -> None:
    assert _upstream_socket_options(kind, KEEPALIVE, tmp_path) == (1, 37, 11, 4)


@pytest.mark.privileged
@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_without_tcp_keepalive_upstream_sockets_have_none(kind: str, tmp_path: Path) -> None:
    assert _upstream_socket_options(kind, "", tmp_path) == (0,)


@pytest.mark.privileged
@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_tcp_proxy_upstream_sockets_get_the_clusters_tcp_keepalive(kind: str, tmp_path: Path) -> None:
    port = free_port()
    upstream = RecordingUpstream()
    try:
        with running_proxy(kind, tcp_proxy_bootstrap(port, upstream.port, cluster_extra=KEEPALIVE), port, tmp_path), \
                socket.create_connection(("127.0.0.1", port), timeout=3) as client:
            client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")   # the upstream connection is up
            with _borrow_socket(_socket_inode(upstream.port)) as sock:
                options = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
    finally:
        upstream.close()
    assert options == (1, 37, 11, 4)


@pytest.mark.parametrize(("options", "field"), [
    ("tcp_keepalive: {keepalive_time: 0}", "tcp_keepalive.keepalive_time"),
    ("tcp_keepalive: {keepalive_interval: 40000}", "tcp_keepalive.keepalive_interval"),
    ("tcp_keepalive: {keepalive_probes: 200}", "tcp_keepalive.keepalive_probes"),
    ("set_local_interface_name_on_upstream_connections: true", "set_local_interface_name_on_upstream_connections"),
])
def test_a_bad_keepalive_option_is_refused_naming_the_field(options: str, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_bootstrap(config_bootstrap(cluster_extra=f"upstream_connection_options: {{{options}}}"))
    assert error.value.path == f"static_resources.clusters[0].upstream_connection_options.{field}"


def test_keepalive_fields_left_out_stay_the_kernels() -> None:
    [cluster] = parse_bootstrap(config_bootstrap(
        cluster_extra="upstream_connection_options: {tcp_keepalive: {keepalive_time: 300}}")).clusters
    assert cluster.tcp_keepalive == TcpKeepalive(time=300)
