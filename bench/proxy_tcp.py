"""TCP through Envoy's tcp_proxy and through tulle-proxy's: bulk throughput and small
request/response rate, same bootstrap, alternating runs.

    .venv/bin/python bench/proxy_tcp.py [--rounds 3] [--duration 5]

Bulk: iperf3 (one stream) through the proxy to an iperf3 server; small exchanges: wrk (50
keep-alive connections) through the proxy to nginx `return 200`. The proxy is pinned to
--proxy-cpu, load and servers to --load-cpu; runs alternate Envoy, tulle, Envoy, tulle... in
one sitting. Printed: medians and Tulle/Envoy ratios of Gbit/s, the proxy's CPU seconds per
GB (bulk), requests/s, requests per second of proxy CPU (`small_rps_per_core`) and CPU µs
per request (small), and the proxy's RSS idle (just started) and after the small load. The
machine may be shared: ratios from the same sitting mean more than absolute figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess

from proxy_lab import free_port, median, nginx, proxy, stop, wait_port, workdir, wrk

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


def iperf(port: int, cpu: int, duration: int) -> float:
    output = subprocess.run(["taskset", "-c", str(cpu), "iperf3", "-c", "127.0.0.1", "-p", str(port),
                             "-t", str(duration), "-J"], capture_output=True, text=True,
                            check=True, timeout=duration + 30).stdout
    return float(json.loads(output)["end"]["sum_received"]["bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    args = parser.parse_args()
    directory = workdir()
    rows: dict[str, list[dict[str, float]]] = {"envoy": [], "tulle": []}
    iperf_port = free_port()
    server = subprocess.Popen(["taskset", "-c", str(args.load_cpu), "iperf3", "-s", "-p", str(iperf_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(iperf_port, server)
        with nginx(args.load_cpu, directory) as web:
            for round_number in range(args.rounds):
                for kind in ("envoy", "tulle"):
                    row: dict[str, float] = {}
                    listener = free_port()
                    text = BOOTSTRAP.format(admin=free_port(), listener=listener, upstream=iperf_port)
                    with proxy(kind, text, args.proxy_cpu, listener, directory) as running:
                        before = running.cpu_seconds()
                        received = iperf(listener, args.load_cpu, args.duration)
                        cpu = running.cpu_seconds() - before
                        row["gbit_s"] = received * 8 / args.duration / 1e9
                        row["cpu_s_per_gb"] = cpu / (received / 1e9)
                    listener = free_port()
                    text = BOOTSTRAP.format(admin=free_port(), listener=listener, upstream=web)
                    with proxy(kind, text, args.proxy_cpu, listener, directory) as running:
                        url = f"http://127.0.0.1:{listener}/"
                        row["rss_idle"] = running.rss_mib()
                        wrk(url, args.load_cpu, 1, 50)
                        before = running.cpu_seconds()
                        result = wrk(url, args.load_cpu, args.duration, 50)
                        cpu = running.cpu_seconds() - before
                        row["small_rps"] = result.rps
                        row["small_cpu_us"] = cpu * 1e6 / max(result.requests, 1)
                        row["small_rps_per_core"] = result.requests / max(cpu, 1e-9)
                        row["rss_load"] = running.rss_mib()
                    rows[kind].append(row)
                    print(f"round {round_number + 1} {kind:5}: {row['gbit_s']:6.2f} Gbit/s "
                          f"({row['cpu_s_per_gb']:.2f} CPU s/GB)  small: {row['small_rps']:8.0f} rps "
                          f"{row['small_cpu_us']:5.1f} us CPU/req  RSS {row['rss_idle']:.1f}/{row['rss_load']:.1f} MiB",
                          flush=True)
    finally:
        stop(server)
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"{'metric':22} {'envoy':>10} {'tulle':>10} {'tulle/envoy':>12}")
    for metric in ("gbit_s", "cpu_s_per_gb", "small_rps", "small_rps_per_core", "small_cpu_us",
                   "rss_idle", "rss_load"):
        envoy = median([row[metric] for row in rows["envoy"]])
        tulle = median([row[metric] for row in rows["tulle"]])
        print(f"{metric:22} {envoy:10.2f} {tulle:10.2f} {tulle / envoy if envoy else float('nan'):12.2f}")


if __name__ == "__main__":
    main()
