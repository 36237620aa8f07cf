"""Two sidecars over mutual TLS, Tulle pair against Envoy pair, in the same run.

    .venv/bin/python bench/proxy_mtls.py [--rounds 2] [--duration 5] [--connections 50] [--plaintext]

Path: wrk -> client sidecar (plaintext listener; cluster with an UpstreamTlsContext: the
sidecar's certificate, the trust bundle, the server's SPIFFE ID as
match_typed_subject_alt_names) -> server sidecar (DownstreamTlsContext, client
certificate required) -> nginx (`return 200`), TLS 1.3 both ways as tulle-control configures
the mesh (--tls-max TLSv1_2 for Envoy's client default). Certificates come from a tulle-control CA
made for the run. Both sidecars share one core (--proxy-cpu), as the client and the
server side share a core each in a mesh; wrk and nginx the other. Measured per pair:
requests/s and p50/p99 at saturation over kept-alive mTLS connections, the sidecars' CPU
time per request, and new TLS handshakes per second (the client cluster with
max_requests_per_connection 1, so every request opens a new mTLS connection) with the
share of them that resumed a TLS session (the client's ssl.session_reused / ssl.handshake).
With --plaintext, each pair is also measured kept-alive with the same bootstraps less their
transport sockets, and the CPU per request that mTLS adds is printed (tls_added_cpu_us).
Printed: medians and Tulle/Envoy ratios (the machine is shared; only ratios mean much).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from proxy_lab import (
    CLOCK_TICKS,
    ENVOY,
    TULLE,
    free_port,
    median,
    nginx,
    stop,
    wait_port,
    workdir,
    wrk,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from proxy.tls.workload_identity import new_key_and_csr

CLIENT_ID = SpiffeId("cluster.local", "web", "frontend")
SERVER_ID = SpiffeId("cluster.local", "shop", "reviews")
_BASE_IDS = itertools.count(os.getpid() % 20000 + 30000)

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"

def tls_params(maximum: str) -> str:
    """tulle-control's mesh asks for TLSv1_3 (Envoy's client default is TLSv1_2)."""
    return f"{{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: {maximum}}}"


def certificates(directory: Path, ca: CertificateAuthority, identity: SpiffeId, maximum: str) -> str:
    """A TlsCertificate + trust bundle block (files in `directory`), as YAML flow text."""
    pair = new_key_and_csr()
    now = dt.datetime.now(dt.UTC)
    chain = directory / f"{identity.service_account}.pem"
    key = directory / f"{identity.service_account}.key"
    chain.write_bytes(ca.issue(pair.csr_pem, identity, now, dt.timedelta(hours=2)).chain_pem())
    key.write_bytes(pair.key_pem)
    return (f"tls_certificates: [{{certificate_chain: {{filename: {chain}}}, private_key: {{filename: {key}}}}}], "
            f"alpn_protocols: [http/1.1], tls_params: {tls_params(maximum)}")


def client_bootstrap(admin: int, listener: int, server: int, tls_block: str, bundle: Path,
                     per_connection: int, tls: bool = True) -> str:
    limit = f"max_requests_per_connection: {per_connection}" if per_connection else ""
    transport_socket = f"""transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        '@type': {TLS}.UpstreamTlsContext
        common_tls_context:
          {{{tls_block}, validation_context: {{trusted_ca: {{filename: {bundle}}},
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: '{SERVER_ID}'}}}}]}}}}""" if tls else ""
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': {HCM}
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - {{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: reviews}}}}]}}
          http_filters:
          - {{name: envoy.filters.http.router, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
  clusters:
  - name: reviews
    connect_timeout: 1s
    {limit}
    {transport_socket}
    load_assignment:
      cluster_name: reviews
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {server}}}}}}}}}]}}]
"""


def server_bootstrap(admin: int, listener: int, upstream: int, tls_block: str, bundle: Path,
                     tls: bool = True) -> str:
    transport_socket = f"""transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          '@type': {TLS}.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            {{{tls_block}, validation_context: {{trusted_ca: {{filename: {bundle}}}}}}}
      """ if tls else ""
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - {transport_socket}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': {HCM}
          stat_prefix: inbound
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{uri: true}}
          route_config:
            virtual_hosts:
            - {{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}
          http_filters:
          - {{name: envoy.filters.http.router, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""


@contextlib.contextmanager
def sidecar(kind: str, name: str, bootstrap: str, cpu: int, port: int, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    config = directory / f"{kind}-{name}.yaml"
    config.write_text(bootstrap)
    if kind == "envoy":
        command = [str(ENVOY), "-c", str(config), "--concurrency", "1", "--log-level", "error",
                   "--base-id", str(next(_BASE_IDS)), "--disable-hot-restart"]
    else:
        command = [str(TULLE), "-c", str(config), "--concurrency", "1", "--log-level", "error"]
    log = open(directory / f"{kind}-{name}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(["taskset", "-c", str(cpu), *command], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, process)
        yield process
    finally:
        stop(process)
        log.close()


def cpu_seconds(*processes: subprocess.Popen[bytes]) -> float:
    total = 0.0
    for process in processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def resumed_share(admin: int) -> float:
    """The client sidecar's resumed share of its new TLS connections (its admin /stats)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5).read().decode()
    stats = dict(line.split(": ", 1) for line in text.splitlines() if line.startswith("cluster.reviews.ssl."))
    handshakes = int(stats.get("cluster.reviews.ssl.handshake", "0"))
    return int(stats.get("cluster.reviews.ssl.session_reused", "0")) / max(handshakes, 1)


def measure(kind: str, args: argparse.Namespace, directory: Path, upstream: int, per_connection: int,
            client_tls: str, server_tls: str, bundle: Path, tls: bool = True) -> dict[str, float]:
    client_port, server_port, client_admin = free_port(), free_port(), free_port()
    with sidecar(kind, "server", server_bootstrap(free_port(), server_port, upstream, server_tls, bundle, tls),
                 args.proxy_cpu, server_port, directory) as server, \
            sidecar(kind, "client", client_bootstrap(client_admin, client_port, server_port, client_tls, bundle,
                                                     per_connection, tls),
                    args.proxy_cpu, client_port, directory) as client:
        time.sleep(0.3)
        url = f"http://127.0.0.1:{client_port}/bench"
        wrk(url, args.load_cpu, 1.0, args.connections)      # warm-up
        before = cpu_seconds(client, server)
        result = wrk(url, args.load_cpu, args.duration, args.connections)
        cpu = cpu_seconds(client, server) - before
        return {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                "cpu_us": cpu * 1e6 / max(result.requests, 1),
                "rps_per_core": result.requests / max(cpu, 1e-9), "errors": result.errors,
                "resumed_pct": 100 * resumed_share(client_admin) if tls else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--tls-max", choices=("TLSv1_3", "TLSv1_2"), default="TLSv1_3",
                        help="the highest TLS version both pairs may negotiate (the mesh's: TLSv1_3)")
    parser.add_argument("--plaintext", action="store_true",
                        help="also measure each pair kept-alive without TLS: what TLS adds per request")
    args = parser.parse_args()
    directory = workdir()
    keep_alive: dict[str, list[dict[str, float]]] = {"envoy": [], "tulle": []}
    handshakes: dict[str, list[dict[str, float]]] = {"envoy": [], "tulle": []}
    plaintext: dict[str, list[dict[str, float]]] = {"envoy": [], "tulle": []}
    try:
        ca = CertificateAuthority.load_or_create(directory / "ca", "cluster.local", dt.datetime.now(dt.UTC))
        bundle = directory / "bundle.pem"
        bundle.write_bytes(ca.trust_bundle_pem())
        client_tls = certificates(directory, ca, CLIENT_ID, args.tls_max)
        server_tls = certificates(directory, ca, SERVER_ID, args.tls_max)
        with nginx(args.load_cpu, directory) as upstream:
            for round_number in range(args.rounds):
                for kind in ("envoy", "tulle"):
                    row = measure(kind, args, directory, upstream, 0, client_tls, server_tls, bundle)
                    keep_alive[kind].append(row)
                    fresh = measure(kind, args, directory, upstream, 1, client_tls, server_tls, bundle)
                    handshakes[kind].append(fresh)
                    print(f"round {round_number + 1} {kind:5}: {row['rps']:8.0f} rps  p50 {row['p50_ms']:.2f} ms  "
                          f"p99 {row['p99_ms']:.2f} ms  {row['cpu_us']:6.1f} us CPU/req  "
                          f"{row['rps_per_core']:8.0f} rps/core  errors {row['errors']:.0f} | "
                          f"new mTLS connections: {fresh['rps']:7.0f} handshakes/s  "
                          f"{fresh['cpu_us']:6.1f} us CPU each  {fresh['resumed_pct']:3.0f}% resumed  "
                          f"errors {fresh['errors']:.0f}", flush=True)
                    if args.plaintext:
                        plain = measure(kind, args, directory, upstream, 0, client_tls, server_tls, bundle, tls=False)
                        plaintext[kind].append(plain)
                        print(f"round {round_number + 1} {kind:5}: plaintext pair {plain['rps']:8.0f} rps  "
                              f"{plain['cpu_us']:6.1f} us CPU/req  {plain['rps_per_core']:8.0f} rps/core  "
                              f"errors {plain['errors']:.0f}", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"{'metric (median)':28} {'envoy pair':>11} {'tulle pair':>11} {'tulle/envoy':>12}")
    rows = [(f"{metric}", keep_alive, metric) for metric in ("rps", "rps_per_core", "cpu_us", "p50_ms", "p99_ms")]
    rows += [("handshakes_per_s", handshakes, "rps"), ("handshake_cpu_us", handshakes, "cpu_us"),
             ("handshakes_resumed_pct", handshakes, "resumed_pct")]
    if args.plaintext:
        rows += [("plaintext_rps_per_core", plaintext, "rps_per_core"), ("plaintext_cpu_us", plaintext, "cpu_us")]
    medians: dict[str, tuple[float, float]] = {}
    for label, table, metric in rows:
        envoy = median([row[metric] for row in table["envoy"]])
        tulle = median([row[metric] for row in table["tulle"]])
        medians[label] = (envoy, tulle)
        print(f"{label:28} {envoy:11.1f} {tulle:11.1f} {tulle / envoy if envoy else float('nan'):12.2f}")
    if args.plaintext:   # the CPU that mTLS adds to a request through the pair
        (envoy_tls, tulle_tls), (envoy_plain, tulle_plain) = medians["cpu_us"], medians["plaintext_cpu_us"]
        envoy, tulle = envoy_tls - envoy_plain, tulle_tls - tulle_plain
        print(f"{'tls_added_cpu_us':28} {envoy:11.1f} {tulle:11.1f} {tulle / envoy if envoy else float('nan'):12.2f}")


if __name__ == "__main__":
    main()
