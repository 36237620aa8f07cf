"""TCP through Envoy's tcp_proxy and through tulle-proxy's: bulk throughput and small
request/response rate, same bootstrap, alternating runs.

    .venv/bin/python bench/proxy_tcp.py [--rounds 3] [--duration 5] [--streams 2] [--syscalls]

Bulk: iperf3 (`--streams` parallel streams, zero-copy sender `-Z`; no omitted first
second, so bytes and CPU cover the same time) through the proxy to an iperf3 server; small exchanges: wrk (50 keep-alive
connections) through the proxy to nginx `return 200`. The proxy is pinned to --proxy-cpu,
load and servers to --load-cpu; runs alternate Envoy, tulle, Envoy, tulle... in one sitting.

What bounds a bulk figure: on loopback the kernel's TCP work lands on whichever core sends
or acknowledges, so a proxy that moves bytes without copying them (splice) leaves more of it
to the iperf3 processes on the load core. So each bulk run also prints the CPU per GB of the
proxy and of the load (iperf3 client and server, from iperf3's own accounting) and how
busy each core was (/proc/stat, every process on it: the machine may be shared); a run
whose load core is near 100% measured the load, not the proxy. `--syscalls` counts the
proxy's system calls and context switches (perf stat) per MB and per request; counting
slows each call (Envoy, which makes more, the more), so take rates from runs without it.

Printed: medians and Tulle/Envoy ratios of Gbit/s, CPU seconds per GB (proxy, load),
requests/s, requests per second of proxy CPU (`small_rps_per_core`) and CPU µs per request
(small), and the proxy's RSS idle (just started) and after the small load.
`small_machine_cpu_us` is both cores' busy time per request (/proc/stat, so it includes other
processes on a shared machine): it also counts kernel work that a proxy's relay leaves to
softirqs and kworkers on the load core, which the proxy's own CPU time does not show. The machine may
be shared: ratios from the same sitting mean more than absolute figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from proxy_lab import free_port, median, nginx, proxy, stop, wait_port, workdir, wrk

T = TypeVar("T")

BOOTSTRAP = """
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench
          cluster: target
  clusters:
  - name: target
    connect_timeout: 1s
    load_assignment:
      cluster_name: target
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""


class CoreClock:
    """Busy share of some CPUs between two readings of /proc/stat (all processes on them)."""

    def __init__(self, *cpus: int) -> None:
        self.cpus = cpus
        self._start = self._read()

    def _read(self) -> dict[int, tuple[int, int]]:
        readings = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cpus:
                ticks = [int(field) for field in fields]
                idle = ticks[3] + ticks[4]   # idle and iowait
                readings[int(name[3:])] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
        return readings

    def busy(self) -> dict[int, float]:
        end = self._read()
        return {cpu: (end[cpu][0] - self._start[cpu][0]) / max(end[cpu][1] - self._start[cpu][1], 1)
                for cpu in self.cpus}


@contextmanager
def syscall_count(pid: int, enabled: bool) -> Iterator[dict[str, float]]:
    """The process's system calls and context switches (all its threads) while the block runs."""
    counts: dict[str, float] = {}
    if not enabled:
        yield counts
        return
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter,context-switches",
                             "-p", str(pid)], stderr=subprocess.PIPE, text=True)
    try:
        yield counts
    finally:
        perf.send_signal(2)
        _, errors = perf.communicate(timeout=10)
        for line in errors.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and re.fullmatch(r"[\d.]+", fields[0]):
                counts["syscalls" if "sys_enter" in fields[2] else "switches"] = float(fields[0])


def iperf(port: int, cpu: int, duration: int, streams: int) -> tuple[float, float]:
    """Bytes received in `duration` seconds and the CPU seconds iperf3's client and server
    spent meanwhile."""
    output = subprocess.run(["taskset", "-c", str(cpu), "iperf3", "-c", "127.0.0.1", "-p", str(port),
                             "-t", str(duration), "-P", str(streams), "-Z", "-J"],
                            capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    end = json.loads(output)["end"]
    usage = end["cpu_utilization_percent"]
    return float(end["sum_received"]["bytes"]), (usage["host_total"] + usage["remote_total"]) / 100 * duration


def measure_bulk(kind: str, args: argparse.Namespace, directory: Path, upstream: int) -> dict[str, float]:
    row: dict[str, float] = {}
    listener = free_port()
    text = BOOTSTRAP.format(admin=free_port(), listener=listener, upstream=upstream)
    with (proxy(kind, text, args.proxy_cpu, listener, directory) as running,
          syscall_count(running.process.pid, args.syscalls) as counts):
        before = running.cpu_seconds()
        cores = CoreClock(args.proxy_cpu, args.load_cpu)
        received, load_cpu = iperf(listener, args.load_cpu, args.duration, args.streams)
        busy = cores.busy()
        cpu = running.cpu_seconds() - before
    gigabytes = received / 1e9
    row["gbit_s"] = received * 8 / args.duration / 1e9
    row["cpu_s_per_gb"] = cpu / gigabytes
    row["load_cpu_s_per_gb"] = load_cpu / gigabytes
    row["proxy_core_busy"] = busy[args.proxy_cpu]
    row["load_core_busy"] = busy[args.load_cpu]
    if counts:
        moved_mb = received / 1e6
        row["syscalls_per_mb"] = counts["syscalls"] / moved_mb
        row["switches_per_mb"] = counts["switches"] / moved_mb
    return row


def measure_small(kind: str, args: argparse.Namespace, directory: Path, upstream: int) -> dict[str, float]:
    row: dict[str, float] = {}
    listener = free_port()
    text = BOOTSTRAP.format(admin=free_port(), listener=listener, upstream=upstream)
    with proxy(kind, text, args.proxy_cpu, listener, directory) as running:
        url = f"http://127.0.0.1:{listener}/"
        row["rss_idle"] = running.rss_mib()
        wrk(url, args.load_cpu, 1, 50)
        with syscall_count(running.process.pid, args.syscalls) as counts:
            before = running.cpu_seconds()
            cores = CoreClock(args.proxy_cpu, args.load_cpu)
            started = time.monotonic()
            result = wrk(url, args.load_cpu, args.duration, 50)
            elapsed = time.monotonic() - started
            busy = cores.busy()
            cpu = running.cpu_seconds() - before
        row["small_rps"] = result.rps
        row["small_cpu_us"] = cpu * 1e6 / max(result.requests, 1)
        row["small_rps_per_core"] = result.requests / max(cpu, 1e-9)
        row["small_machine_cpu_us"] = sum(busy.values()) * elapsed * 1e6 / max(result.requests, 1)
        row["rss_load"] = running.rss_mib()
        if counts:
            row["syscalls_per_rq"] = counts["syscalls"] / max(result.requests, 1)
            row["switches_per_rq"] = counts["switches"] / max(result.requests, 1)
    return row


def alternate(rounds: int, run: Callable[[str], T]) -> Iterator[tuple[int, str, T]]:
    for round_number in range(rounds):
        for kind in ("envoy", "tulle"):
            yield round_number + 1, kind, run(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--streams", type=int, default=2, help="parallel iperf3 streams (-P)")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--only", choices=("bulk", "small"), help="run one of the two measurements")
    parser.add_argument("--syscalls", action="store_true",
                        help="count the proxy's system calls and context switches (perf stat)")
    args = parser.parse_args()
    if args.syscalls and shutil.which("perf") is None:
        parser.error("--syscalls needs perf")
    directory = workdir()
    rows: dict[str, list[dict[str, float]]] = {"envoy": [], "tulle": []}
    iperf_port = free_port()
    server = subprocess.Popen(["taskset", "-c", str(args.load_cpu), "iperf3", "-s", "-p", str(iperf_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(iperf_port, server)
        with nginx(args.load_cpu, directory) as web:
            def run(kind: str) -> dict[str, float]:
                row: dict[str, float] = {}
                if args.only != "small":
                    row.update(measure_bulk(kind, args, directory, iperf_port))
                if args.only != "bulk":
                    row.update(measure_small(kind, args, directory, web))
                return row

            for round_number, kind, row in alternate(args.rounds, run):
                rows[kind].append(row)
                print(f"round {round_number} {kind:5}: " + "  ".join(
                    f"{metric} {value:.3g}" for metric, value in row.items()), flush=True)
    finally:
        stop(server)
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"{'metric (medians)':22} {'envoy':>10} {'tulle':>10} {'tulle/envoy':>12}")
    for metric in rows["envoy"][0]:
        envoy = median([row[metric] for row in rows["envoy"]])
        tulle = median([row[metric] for row in rows["tulle"]])
        print(f"{metric:22} {envoy:10.3f} {tulle:10.3f} {tulle / envoy if envoy else float('nan'):12.2f}")


if __name__ == "__main__":
    main()
