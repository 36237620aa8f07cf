"""HTTP/1.1 through Envoy and through tulle-proxy: same bootstrap, same nginx, same wrk.

    .venv/bin/python bench/proxy_http.py [--rounds 3] [--duration 5] [--connections 50]

The proxy is pinned to one core (--proxy-cpu), wrk and nginx (`return 200`, one worker) to
the other (--load-cpu); runs alternate Envoy, tulle, Envoy, tulle... in one sitting. For each
run: requests/s at saturation, the proxy's own CPU time per request (utime+stime from
/proc), wrk's p50/p99 at saturation, p50/p99 at a fixed rate (--rate, default 10,000/s,
h2load --rps with per-request logs), RSS idle and after load. The route carries what the
issue's features cost: a retry policy, a route timeout, request/response header mutations,
x-request-id generation, and all stats. Printed: the medians per proxy and Tulle/Envoy
ratios (the machine is shared, so only ratios mean much).
"""

from __future__ import annotations

import argparse
import shutil

from proxy_lab import fixed_rate_latency, free_port, median, nginx, proxy, workdir, wrk

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
