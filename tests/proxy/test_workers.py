"""--concurrency N: N worker processes share the listening socket (SO_REUSEPORT)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.proxy.running import RecordingUpstream, bootstrap, exchange, free_port
from tests.proxy_process import TULLE


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in out.stdout.split()]


def listening_sockets(port: int) -> int:
    """Sockets listening on this TCP port (each worker's SO_REUSEPORT socket is one)."""
    suffix = f":{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if (fields := row.split())[1].endswith(suffix) and fields[3] == "0A")


def test_concurrency_runs_n_workers_that_all_serve_and_stop_together(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    port = free_port()
    config = tmp_path / "bootstrap.yaml"
    config.write_text(bootstrap(port, upstream.port))
    process = subprocess.Popen([str(TULLE), "-c", str(config), "--concurrency", "3",
                                "--log-level", "error"], start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while len(children(process.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = children(process.pid)
        assert len(workers) == 3
        while listening_sockets(port) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listening_sockets(port) == 3   # every worker has bound its own socket
        responses = [exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                     for _ in range(30)]
        assert all(response.startswith(b"HTTP/1.1 200 ") for response in responses), responses
        process.terminate()
        assert process.wait(10) == 0
        assert not children(process.pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        upstream.close()
