"""A real etcd server for tests: Debian's /usr/bin/etcd on free loopback ports with a
throwaway data dir, stopped (by PID) and removed afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ETCD = "/usr/bin/etcd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EtcdServer:
    endpoint: str
    process: subprocess.Popen[bytes]


def _wait_ready(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def etcd_server() -> Iterator[EtcdServer]:
    data = Path(tempfile.mkdtemp(prefix="tulle-etcd-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(5):  # a free port may be taken between probing and etcd's bind
            client, peer = _free_port(), _free_port()
            name = f"tulle-test-{client}"
            process = subprocess.Popen(
                [ETCD, "--name", name, "--data-dir", str(data / name),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"{name}=http://127.0.0.1:{peer}",
                 "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            if _wait_ready("127.0.0.1", client, process, 20):
                break
            process.kill()
            process.wait()
        else:
            raise RuntimeError("etcd did not start")
        yield EtcdServer(f"127.0.0.1:{client}", process)
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(data, ignore_errors=True)
