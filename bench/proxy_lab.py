"""What the proxy benchmarks share: nginx as the upstream, Envoy and tulle-proxy started on
the same bootstrap and pinned to a core, their CPU time and RSS read from /proc, and wrk's
output parsed. Everything runs on loopback with ephemeral ports and is stopped by PID."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENVOY = REPO / ".venv" / "bin" / "envoy"
TULLE = REPO / ".venv" / "bin" / "tulle-proxy"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"process {process.args!r} did not start listening on {port}") from None
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def nginx(cpu: int, workdir: Path) -> Iterator[int]:
    """nginx with one worker answering `return 200` (a 2-byte body) on a fresh port."""
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ return 200 "ok"; }}
  }}
}}
""")
    process = subprocess.Popen(["taskset", "-c", str(cpu), "nginx", "-c", str(conf), "-p", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, process)
        yield port
    finally:
        stop(process)


@dataclass
class Proxy:
    kind: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


@contextlib.contextmanager
def proxy(kind: str, bootstrap: str, cpu: int, port: int, workdir: Path) -> Iterator[Proxy]:
    config = workdir / f"{kind}.yaml"
    config.write_text(bootstrap)
    if kind == "envoy":
        command = [str(ENVOY), "-c", str(config), "--concurrency", "1", "--log-level", "error",
                   "--base-id", str(os.getpid() % 50000 + 7000)]
    else:
        command = [str(TULLE), "-c", str(config), "--concurrency", "1", "--log-level", "error"]
    log = open(workdir / f"{kind}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(["taskset", "-c", str(cpu), *command], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_port(port, process)
        time.sleep(0.3)
        yield Proxy(kind, process)
    finally:
        stop(process)
        log.close()


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url: str, cpu: int, duration: float, connections: int, threads: int = 1) -> WrkResult:
    output = subprocess.run(
        ["taskset", "-c", str(cpu), "wrk", "-t", str(threads), "-c", str(connections),
         "-d", f"{max(1, round(duration))}s", "--latency", url],
        capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(group) for group in socket_errors.groups())
    return WrkResult(requests, rps, _ms(p50.group(1)) if p50 else float("nan"),
                     _ms(p99.group(1)) if p99 else float("nan"), failed)


def fixed_rate_latency(url: str, cpu: int, rate: int, duration: int, clients: int,
                       log: Path) -> tuple[float, float, int]:
    """p50 and p99 (ms) and the number of requests at a fixed request rate (h2load --rps,
    HTTP/1.1, `clients` keep-alive connections sharing the rate)."""
    log.unlink(missing_ok=True)
    subprocess.run(["taskset", "-c", str(cpu), "h2load", "--h1", "-c", str(clients),
                    "--rps", str(max(1, rate // clients)), "-D", str(duration),
                    "--log-file", str(log), url],
                   capture_output=True, text=True, check=True, timeout=duration + 30)
    latencies = sorted(int(line.split()[2]) / 1000 for line in log.read_text().splitlines() if line.strip())
    if not latencies:
        return float("nan"), float("nan"), 0
    def at(share: float) -> float:
        return latencies[min(len(latencies) - 1, int(share * len(latencies)))]
    return at(0.50), at(0.99), len(latencies)


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tulle-bench-"))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
