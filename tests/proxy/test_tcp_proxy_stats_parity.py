"""tcp_proxy's cluster stats against the real Envoy: the same bootstrap and the same
connections give the same upstream_cx_destroy_local / _remote (who closed each upstream
connection) and upstream_cx_rx/tx_bytes_total (bytes spliced by the kernel too)."""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.proxy.running import ThreadedUpstream, free_port, running_proxy, tcp_proxy_bootstrap

BULK = 256 * 1024   # past the 64 KiB read that sends a direction to splice(2)
STATS = ("upstream_cx_total", "upstream_cx_destroy", "upstream_cx_destroy_local",
         "upstream_cx_destroy_remote", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total")


class ScriptedEchoUpstream(ThreadedUpstream):
    """Echoes; a connection whose first byte is `q` closes after its first echo, the others
    echo until the client's FIN and then close."""

    def serve(self, conn: socket.socket) -> None:
        first = True
        while data := conn.recv(65536):
            conn.sendall(data)
            if first and data.startswith(b"q"):
                return
            first = False


def _read_all(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := sock.recv(65536)):
        data += chunk
    return data


def upstream_closes_first(port: int) -> None:
    """The upstream answers and closes; then the client closes: its FIN completes the pair."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"quit")
        assert _read_all(sock, 4) == b"quit"
        assert sock.recv(1) == b""


def client_finishes_first(port: int) -> None:
    """The client sends its FIN after the echo; the upstream's FIN completes the pair."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"hello")
        assert _read_all(sock, 5) == b"hello"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


def client_resets(port: int) -> None:
    """The client resets the connection after an echo."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    sock.sendall(b"hello")
    assert _read_all(sock, 5) == b"hello"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def bulk_echo(port: int) -> None:
    """256 KiB each way (spliced by Tulle), then the client's FIN."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"x" * BULK)
        assert len(_read_all(sock, BULK)) == BULK
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


def _cluster_stats(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as reply:
        lines = dict(line.split(": ", 1) for line in reply.read().decode().splitlines() if ": " in line)
    return {stat: int(lines[f"cluster.up.{stat}"]) for stat in STATS}


def _observe(kind: str, traffic: Callable[[int], None], workdir: Path) -> dict[str, int]:
    """The cluster's stats moved by `traffic` through a proxy of `kind`."""
    upstream = ScriptedEchoUpstream()
    port, admin = free_port(), free_port()
    try:
        with running_proxy(kind, tcp_proxy_bootstrap(port, upstream.port, admin_port=admin), port, workdir):
            # the readiness probe's connection went through to the upstream too: counted apart
            time.sleep(0.3)
            before = _cluster_stats(admin)
            traffic(port)
            time.sleep(0.3)   # (the proxy sees the last close)
            after = _cluster_stats(admin)
            return {stat: after[stat] - before[stat] for stat in STATS}
    finally:
        upstream.close()


@pytest.mark.parametrize("traffic", [upstream_closes_first, client_finishes_first, client_resets, bulk_echo],
                         ids=lambda traffic: traffic.__name__)
def test_who_closed_the_upstream_connection_and_its_bytes_count_as_in_envoy(
        traffic: Callable[[int], None], tmp_path: Path) -> None:
    envoy = _observe("envoy", traffic, tmp_path)
    tulle = _observe("tulle", traffic, tmp_path)
    assert tulle == envoy
