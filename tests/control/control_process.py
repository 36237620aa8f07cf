"""A real tulle-control process for tests: its own state dir and socket, ephemeral TCP
ports (read from its "mtls:" and "ready" lines), stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TULLE_CONTROL = Path(sys.executable).parent / "tulle-control"
MESHCTL = Path(sys.executable).parent / "meshctl"


@dataclass
class ControlProcess:
    process: subprocess.Popen[bytes]
    address: str  # the plaintext config API ("" without one)
    state_dir: Path
    tls_address: str = ""  # the first mTLS port ("" without one)

    @property
    def socket(self) -> Path:
        return self.state_dir / "control.sock"

    def log(self) -> str:
        return (self.state_dir / "tulle-control.log").read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no chance to flush or close anything."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_control(state_dir: Path, *extra: str, timeout: float = 20.0,
                  listen: tuple[str, ...] = ("--listen", "127.0.0.1:0")) -> ControlProcess:
    """`listen`: the TCP flags (default: a plaintext config API on an ephemeral port)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "tulle-control.log"
    with log.open("ab") as sink:
        start = log.stat().st_size
        process = subprocess.Popen(
            [str(TULLE_CONTROL), "--state-dir", str(state_dir), "--socket", str(state_dir / "control.sock"),
             *listen, "--log-level", "warning", *extra],
            stdout=subprocess.DEVNULL, stderr=sink,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tls = ""
        for line in log.read_bytes()[start:].decode(errors="replace").splitlines():
            if line.startswith("tulle-control mtls:"):
                tls = line.split()[2]
            if line.startswith("tulle-control ready:"):
                address = next((a for a in line.split()[2:] if a.startswith("127.0.0.1:") and a != tls), "")
                return ControlProcess(process, address, state_dir, tls)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"tulle-control did not start: {log.read_bytes()[start:].decode(errors='replace')}")


@contextmanager
def control_process(state_dir: Path, *extra: str) -> Iterator[ControlProcess]:
    control = start_control(state_dir, *extra)
    try:
        yield control
    finally:
        control.stop()
