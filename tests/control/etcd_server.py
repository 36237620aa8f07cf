"""A real etcd server for tests: Debian's /usr/bin/etcd on free loopback ports with a
throwaway data dir, stopped (by PID) and removed afterwards. It can be stopped and
started again on the same ports and data, to test reconnection."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port as _free_port

ETCD = "/usr/bin/etcd"


class EtcdServer:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.client_port = 0
        self.peer_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        name = "tulle-test"
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        return subprocess.Popen(
            [ETCD, "--name", name, "--data-dir", str(self.data / name),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"{name}={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def _ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def start(self) -> None:
        """On new free ports the first time (retrying if one was taken meanwhile), then on the same ones."""
        fresh = self.client_port == 0
        for _ in range(5 if fresh else 1):
            if fresh:
                self.client_port, self.peer_port = _free_port(), _free_port()
            self.process = self._spawn()
            if self._ready(20):
                return
            self.stop()
        raise RuntimeError("etcd did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextmanager
def etcd_server() -> Iterator[EtcdServer]:
    server = EtcdServer(Path(tempfile.mkdtemp(prefix="tulle-etcd-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data, ignore_errors=True)
