"""HTTP/1.1 through Envoy and through tulle-proxy: same bootstrap, same nginx, same wrk.

    .venv/bin/python bench/proxy_http.py [--rounds 3] [--duration 5] [--connections 50]
    .venv/bin/python bench/proxy_http.py --calls 20000
    .venv/bin/python bench/proxy_http.py --python 20000 [--access-log istio-text]

The proxy is pinned to one core (--proxy-cpu), wrk and nginx (`return 200`, one worker) to
the other (--load-cpu); runs alternate Envoy, tulle, Envoy, tulle... in one sitting. For each
run: requests/s at saturation, the proxy's own CPU time per request (utime+stime from
/proc), wrk's p50/p99 at saturation, p50/p99 at a fixed rate (--rate, default 10,000/s,
h2load --rps with per-request logs), RSS idle and after load. The route carries what the
issue's features cost: a retry policy, a route timeout, request/response header mutations,
x-request-id generation, and all stats. Printed: the medians per proxy and Tulle/Envoy
ratios (the machine is shared, so only ratios mean much).

`--calls N` measures instead what the interpreter does per request, which a shared machine
does not blur: tulle-proxy runs under cProfile (switched on by SIGUSR1 after a warm-up, off
by SIGUSR2), h2load sends exactly N requests, and the profiled calls (Python functions and
built-ins, as cProfile counts them) are divided by N; the functions called most follow.

`--python N` measures the Python side alone: the bootstrap's connection manager in this
process, a downstream and an upstream connection on in-memory transports (no kernel, no
event-loop I/O), N requests of wrk's shape answered by nginx's response bytes; the thread's
CPU time per request, best of 7 runs. Beside it, the same parse-and-forward with nothing
else (httptools callbacks, a header list, one join each way): the floor any feature adds to.
With `--access-log FORMAT` the listener also writes a file access log: Envoy's default
format, Istio's text format or Istio's JSON format (`istio-text`, `istio-json`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from proxy_lab import (
    REPO,
    fixed_rate_latency,
    free_port,
    median,
    nginx,
    proxy,
    stop,
    wait_port,
    workdir,
    wrk,
)

from proxy.access_log_format import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT

BOOTSTRAP = """
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ['*']
              routes:
              - match: {{prefix: /api/}}
                route: {{cluster: nginx, prefix_rewrite: /v2/}}
              - match: {{prefix: /}}
                route:
                  cluster: nginx
                  timeout: 10s
                  retry_policy: {{retry_on: 5xx, num_retries: 2}}
                request_headers_to_add: [{{header: {{key: x-route, value: bench}}}}]
                response_headers_to_add: [{{header: {{key: x-proxied, value: 'yes'}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: nginx
    connect_timeout: 1s
    load_assignment:
      cluster_name: nginx
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--rate", type=int, default=10_000, help="fixed rate for the latency run")
    parser.add_argument("--calls", type=int, default=0, metavar="N",
                        help="count tulle-proxy's function calls over N requests instead")
    parser.add_argument("--python", type=int, default=0, metavar="N",
                        help="time the Python side of N requests in this process instead")
    parser.add_argument("--access-log", choices=sorted(ACCESS_LOGS), default=None,
                        help="with --python: a file access log in this format on the listener")
    args = parser.parse_args()
    if args.calls:
        count_calls(args)
        return
    if args.python:
        python_cost(args.python, args.access_log)
        return
    directory = workdir()
    results: dict[str, list[dict[str, float]]] = {"envoy": [], "tulle": []}
    try:
        with nginx(args.load_cpu, directory) as upstream:
            for round_number in range(args.rounds):
                for kind in ("envoy", "tulle"):
                    listener = free_port()
                    text = BOOTSTRAP.format(admin=free_port(), listener=listener, upstream=upstream)
                    with proxy(kind, text, args.proxy_cpu, listener, directory) as running:
                        url = f"http://127.0.0.1:{listener}/bench"
                        idle_rss = running.rss_mib()
                        wrk(url, args.load_cpu, 1.0, args.connections)   # warm-up
                        cpu_before = running.cpu_seconds()
                        result = wrk(url, args.load_cpu, args.duration, args.connections)
                        cpu = running.cpu_seconds() - cpu_before
                        fixed_p50, fixed_p99, _ = fixed_rate_latency(
                            url, args.load_cpu, args.rate, max(2, round(args.duration)), args.connections,
                            directory / f"{kind}-latency.log")
                        row = {"rps": result.rps, "cpu_us": cpu * 1e6 / max(result.requests, 1),
                               "p50_fixed_ms": fixed_p50, "p99_fixed_ms": fixed_p99,
                               "rps_per_core": result.requests / max(cpu, 1e-9),
                               "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                               "rss_idle": idle_rss, "rss_load": running.rss_mib(),
                               "errors": result.errors}
                        results[kind].append(row)
                        print(f"round {round_number + 1} {kind:5}: {row['rps']:9.0f} rps  "
                              f"{row['cpu_us']:6.1f} us CPU/req  {row['rps_per_core']:9.0f} rps/core  "
                              f"p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms  "
                              f"@{args.rate}/s p50 {row['p50_fixed_ms']:.2f} p99 {row['p99_fixed_ms']:.2f} ms  "
                              f"RSS {row['rss_idle']:.0f}/{row['rss_load']:.0f} MiB  errors {row['errors']:.0f}",
                              flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"{'metric':22} {'envoy':>10} {'tulle':>10} {'tulle/envoy':>12}")
    for metric in ("rps", "rps_per_core", "cpu_us", "p50_ms", "p99_ms", "p50_fixed_ms",
                   "p99_fixed_ms", "rss_idle", "rss_load"):
        envoy = median([row[metric] for row in results["envoy"]])
        tulle = median([row[metric] for row in results["tulle"]])
        print(f"{metric:22} {envoy:10.1f} {tulle:10.1f} {tulle / envoy if envoy else float('nan'):12.2f}")


# tulle-proxy's entry point with a profiler that SIGUSR1 switches on and SIGUSR2 off (dumping
# its stats to argv[1]); signals, so that start-up and warm-up stay out of the count.
PROFILED = """
import cProfile, signal, sys
from proxy.cli import main
profile = cProfile.Profile()
out = sys.argv.pop(1)
def on(signum, frame): profile.enable()
def off(signum, frame):
    profile.disable()
    profile.dump_stats(out)
signal.signal(signal.SIGUSR1, on)
signal.signal(signal.SIGUSR2, off)
sys.exit(main())
"""


def count_calls(args: argparse.Namespace) -> None:
    directory = workdir()
    try:
        with nginx(args.load_cpu, directory) as upstream:
            listener = free_port()
            config = directory / "tulle.yaml"
            config.write_text(BOOTSTRAP.format(admin=free_port(), listener=listener, upstream=upstream))
            out = directory / "calls.prof"
            process = subprocess.Popen(
                ["taskset", "-c", str(args.proxy_cpu), sys.executable, "-c", PROFILED, str(out),
                 "-c", str(config), "--concurrency", "1", "--log-level", "error"],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            try:
                wait_port(listener, process)
                url = f"http://127.0.0.1:{listener}/bench"
                load = ["taskset", "-c", str(args.load_cpu), "h2load", "--h1", "-c", str(args.connections)]
                subprocess.run([*load, "-n", "5000", url], capture_output=True, check=True, timeout=60)
                os.kill(process.pid, signal.SIGUSR1)
                time.sleep(0.2)
                result = subprocess.run([*load, "-n", str(args.calls), url], capture_output=True,
                                        text=True, check=True, timeout=120)
                os.kill(process.pid, signal.SIGUSR2)
                deadline = time.monotonic() + 10
                while not out.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                stop(process)
            report_calls(out, args.calls, result.stdout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def report_calls(profile: Path, requests: int, load_output: str) -> None:
    stats = pstats.Stats(str(profile))
    summary = [line for line in load_output.splitlines() if line.startswith("status codes:")]
    print(f"{requests} requests ({summary[0] if summary else 'h2load status unknown'})")
    print(f"calls per request: {stats.total_calls / requests:.1f} "   # type: ignore[attr-defined]
          f"(primitive {stats.prim_calls / requests:.1f})")            # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][1])    # type: ignore[attr-defined]
    print(f"{'calls/req':>9}  function")
    for (filename, line, name), (_, calls, *_rest) in rows[:80]:
        where = f"{Path(filename).name}:{line}" if line else filename
        print(f"{calls / requests:9.2f}  {name} ({where})")


# What wrk sends, and what nginx (`return 200 "ok"`) answers.
WRK_REQUEST = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n"
NGINX_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 18:00:00 GMT\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 2\r\n"
                  b"Connection: keep-alive\r\n\r\nok")


class MemoryTransport:
    """A transport that keeps what is written (cleared between runs)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 10000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def python_cost(requests: int, access_log: str | None = None) -> None:
    import uvloop

    uvloop.install()
    tulle = asyncio.run(_tulle_python_cost(requests, access_log))
    floor = _floor_python_cost(requests)
    print(f"Python CPU per request: tulle-proxy {tulle:.2f} us, bare parse-and-forward {floor:.2f} us")


def _best_of(runs: int, requests: int, one: object, clear: object) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        start = time.thread_time()
        for _ in range(requests):
            one()   # type: ignore[operator]
        best = min(best, (time.thread_time() - start) / requests * 1e6)
        clear()   # type: ignore[operator]
    return best


async def _tulle_python_cost(requests: int, access_log: str | None = None) -> float:
    from proxy.bootstrap import load_bootstrap
    from proxy.http.client import UpstreamConnection
    from proxy.http.downstream import DownstreamConnection
    from proxy.server import ProxyServer

    directory = workdir()
    try:
        config = directory / "tulle.yaml"
        text = BOOTSTRAP.format(admin=0, listener=0, upstream=free_port())
        if access_log is not None:
            text = text.replace("          stat_prefix: bench\n", "          stat_prefix: bench\n"
                                + ACCESS_LOGS[access_log].format(path=directory / "access.log"))
        config.write_text(text)
        server = ProxyServer(load_bootstrap(str(config)))
        await server.start()
        try:
            cluster = server.clusters["nginx"]
            host = cluster.balancer.choose(None)
            assert host is not None
            pool = cluster.pool(host)
            upstream = UpstreamConnection(pool)
            upstream_transport = MemoryTransport()
            upstream.connection_made(upstream_transport)   # type: ignore[arg-type]
            pool.release(upstream)   # idle in the pool, as after a first exchange
            downstream = DownstreamConnection(server.managers[0])
            downstream_transport = MemoryTransport()
            downstream.connection_made(downstream_transport)   # type: ignore[arg-type]

            def one() -> None:
                downstream.data_received(WRK_REQUEST)
                upstream.data_received(NGINX_RESPONSE)

            def clear() -> None:
                assert downstream_transport.written[-1].startswith(b"HTTP/1.1 200 OK"), "no response"
                downstream_transport.written.clear()
                upstream_transport.written.clear()

            return _best_of(7, requests, one, clear)
        finally:
            await server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


_ACCESS_LOG = """          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
"""
# (str.format fields of the bootstrap's access_log block, by --access-log choice)
ACCESS_LOGS = {
    "default": _ACCESS_LOG,
    "istio-text": _ACCESS_LOG + "              log_format: {{text_format_source: {{inline_string: "
                  + json.dumps(ISTIO_TEXT_FORMAT).replace("{", "{{").replace("}", "}}") + "}}}}\n",
    "istio-json": _ACCESS_LOG + "              log_format: {{json_format: "
                  + json.dumps(ISTIO_JSON_FORMAT).replace("{", "{{").replace("}", "}}") + "}}\n",
}


def _floor_python_cost(requests: int) -> float:
    import httptools

    class Upstream:
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.transport = MemoryTransport()
            self.headers: list[tuple[bytes, bytes]] = []
            self.body: list[bytes] = []
            self.downstream: MemoryTransport = MemoryTransport()

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            parts = [b"HTTP/1.1 200 OK\r\n"]
            for name, value in self.headers:
                if name != b"connection":
                    parts += (name, b": ", value, b"\r\n")
            parts.append(b"\r\n")
            parts += self.body
            self.headers, self.body = [], []
            self.downstream.write(b"".join(parts))

    class Downstream:
        def __init__(self, upstream: Upstream) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.upstream = upstream
            self.url = b""
            self.headers: list[tuple[str, str]] = []

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

        def on_message_complete(self) -> None:
            lines = "".join([f"{name}: {value}\r\n" for name, value in self.headers])
            self.upstream.transport.write(b"GET " + self.url + b" HTTP/1.1\r\n" + lines.encode("latin-1")
                                          + b"\r\n")
            self.url, self.headers = b"", []

    upstream = Upstream()
    downstream = Downstream(upstream)

    def one() -> None:
        downstream.parser.feed_data(WRK_REQUEST)
        upstream.parser.feed_data(NGINX_RESPONSE)

    def clear() -> None:
        upstream.transport.written.clear()
        upstream.downstream.written.clear()

    return _best_of(7, requests, one, clear)


if __name__ == "__main__":
    main()
