"""How tulle-control's ADS server scales with the number of connected proxies.

Runs tulle-control's ADS server in its own process (so its CPU and memory are its own)
with a mesh of S services and E endpoints (Pods, Services, v1 Endpoints, as the store
hands them), connects N simulated proxies from a second process, each a distinct node
speaking ADS as Envoy does (SotW: wildcard CDS and LDS, then EDS and RDS for the names
those return; delta: the same subscriptions as deltas), ACKing every response, and
measures:

- initial sync: per client, from opening its stream until it holds clusters, endpoints,
  listeners and routes (p50/p99), and from the first stream opening until the last
  client is synced ("sync all"); clients open 100 per 50 ms;
- one endpoint change: from the change entering the server (so including the 100 ms
  debounce) until each client has received and ACKed the new assignment (p50/p99/max);
- the server's CPU seconds for each phase and its RSS (current and peak).

No other xDS control plane is installed on this machine, so the reference in the ratio
is the issue's target (every client ACKed within 1 s of a change at 1,000 clients) and
istiod's published figure (100 ms debounce; ~25,000 sidecars on 15 CPUs, i.e. ~1,700
sidecars per core).

Usage: python bench/xds_scale.py [--clients 100,1000] [--variants sotw,delta]
                                 [--services 1000] [--endpoints 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control.xds.debounce import DebounceConfig
from control.xds.server import AdsServer

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no GOAWAY chatter when streams close

NS = "bench"
PORT = 8080
CHANGED_SERVICE = "svc-0"
OPEN_BATCH = 100  # client streams opened per 50 ms
CHANGED_CLUSTER = f"outbound|{PORT}||{CHANGED_SERVICE}.{NS}.svc.cluster.local"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


# -- the server process -------------------------------------------------------------------


def mesh_documents(services: int, endpoints: int) -> list[dict[str, Any]]:
    per = max(1, endpoints // services)
    docs: list[dict[str, Any]] = [{"kind": "Namespace", "metadata": {"name": NS}}]
    n = 0
    for s in range(services):
        name = f"svc-{s}"
        docs.append({
            "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"clusterIP": f"10.96.{s // 250}.{s % 250 + 1}", "selector": {"app": name},
                     "ports": [{"name": "http", "port": PORT, "targetPort": 8080}]},
        })
        addresses = []
        for _ in range(per):
            ip = f"10.{64 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}"
            pod = f"{name}-{n}"
            n += 1
            docs.append({"kind": "Pod", "metadata": {"name": pod, "namespace": NS, "labels": {"app": name}},
                         "spec": {"nodeName": f"node-{n % 50}"}, "status": {"podIP": ip}})
            addresses.append({"ip": ip, "nodeName": f"node-{n % 50}", "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}})
        docs.append(endpoints_doc(name, addresses))
    return docs


def endpoints_doc(name: str, addresses: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "Endpoints", "metadata": {"name": name, "namespace": NS},
            "subsets": [{"addresses": addresses, "ports": [{"name": "http", "port": 8080}]}]}


async def serve(services: int, endpoints: int) -> None:

    server = AdsServer(DebounceConfig(quiet=0.1, max_delay=1.0))
    docs = mesh_documents(services, endpoints)
    server.replace(docs)
    server.push_now()
    port = await server.start("127.0.0.1:0")
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    changes = 0
    while line := (await reader.readline()).decode().strip():
        if line == "change":
            changes += 1
            svc0 = next(d for d in docs if d["kind"] == "Endpoints" and d["metadata"]["name"] == CHANGED_SERVICE)
            addresses = [dict(a) for a in svc0["subsets"][0]["addresses"]]
            addresses[0]["ip"] = f"10.127.{changes // 250}.{changes % 250 + 1}"
            server.upsert(endpoints_doc(CHANGED_SERVICE, addresses))
            print(json.dumps({"changed": changes}), flush=True)
        elif line == "status":
            statuses = server.status()
            print(json.dumps({"streams": len(statuses), "nacks": sum(1 for s in statuses for t in s.types if t.last_nack)}), flush=True)
        elif line == "quit":
            break
    await server.stop(0)


# -- the client process -------------------------------------------------------------------


class Client:
    """One simulated proxy: subscribes as Envoy does and ACKs everything."""

    def __init__(self, index: int, variant: str) -> None:
        self.index, self.variant = index, variant
        self.started_at = 0.0
        self.synced_at: float | None = None
        self.change_seen_at: float | None = None
        self.watch_change_after = float("inf")
        self.clusters: set[str] = set()
        self.assignments: set[str] = set()
        self.routes_wanted: set[str] = set()
        self.routes: set[str] = set()
        self.listeners = False

    def _synced(self) -> bool:
        return bool(self.listeners and self.clusters and self.clusters <= self.assignments and self.routes_wanted <= self.routes)

    async def run(self, channel: Any) -> None:

        node = base_pb2.Node(id=f"sidecar~10.200.{self.index // 250}.{self.index % 250 + 1}~bench-client-{self.index}.{NS}~{NS}.svc.cluster.local")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if self.variant == "sotw":
            method = channel.stream_stream(ADS + "StreamAggregatedResources", request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=discovery_pb2.DiscoveryResponse.FromString)
            for t in (CLUSTER, LISTENER):
                queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=t))
        else:
            method = channel.stream_stream(ADS + "DeltaAggregatedResources", request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString)
            for t in (CLUSTER, LISTENER):
                queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=t))

        async def requests() -> Any:
            while (item := await queue.get()) is not None:
                yield item

        call = method(requests())
        try:
            async for resp in call:
                now = time.monotonic()
                for req in self._handle(resp, now):
                    queue.put_nowait(req)
        finally:
            queue.put_nowait(None)

    def _handle(self, resp: Any, now: float) -> list[Any]:

        sotw = self.variant == "sotw"
        t = resp.type_url
        if sotw:
            entries = [(None, r) for r in resp.resources]
            # A SotW request always repeats the full subscription (empty: wildcard).
            subscribed = sorted(self.clusters) if t == ENDPOINT else sorted(self.routes_wanted) if t == ROUTE else []
            ack: Any = discovery_pb2.DiscoveryRequest(
                type_url=t, response_nonce=resp.nonce, version_info=resp.version_info, resource_names=subscribed
            )
        else:
            entries = [(r.name, r.resource) for r in resp.resources]
            ack = discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce)
        out = [ack]
        if t == CLUSTER:
            names: set[str] = set()
            for name, packed in entries:
                if name is None:
                    c = cluster_pb2.Cluster()
                    packed.Unpack(c)
                    name = c.name
                if not name.startswith("outbound|"):
                    continue
                names.add(name)
            new = names - self.clusters if not sotw else names
            self.clusters = names if sotw else self.clusters | names
            if new:
                if sotw:
                    out.append(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=sorted(self.clusters),
                                                             response_nonce=getattr(self, "eds_nonce", "")))
                else:
                    out.append(discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=sorted(new)))
        elif t == ENDPOINT:
            if sotw:
                self.eds_nonce = resp.nonce
            for name, packed in entries:
                if name is None:
                    # cluster_name is field 1 of ClusterLoadAssignment: read it without a full parse
                    name = _first_string_field(packed.value)
                self.assignments.add(name)
                if name == CHANGED_CLUSTER and now >= self.watch_change_after and self.change_seen_at is None:
                    self.change_seen_at = now
        elif t == LISTENER:
            self.listeners = True
            wanted = set()
            for _, packed in entries:
                listener = listener_pb2.Listener()
                packed.Unpack(listener)
                for chain in listener.filter_chains:
                    for f in chain.filters:
                        if f.name == "envoy.filters.network.http_connection_manager":
                            hcm = http_connection_manager_pb2.HttpConnectionManager()
                            f.typed_config.Unpack(hcm)
                            wanted.add(hcm.rds.route_config_name)
            new_routes = wanted - self.routes_wanted
            self.routes_wanted |= wanted
            if new_routes:
                if sotw:
                    out.append(discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=sorted(self.routes_wanted),
                                                             response_nonce=getattr(self, "rds_nonce", "")))
                else:
                    out.append(discovery_pb2.DeltaDiscoveryRequest(type_url=ROUTE, resource_names_subscribe=sorted(new_routes)))
        elif t == ROUTE:
            if sotw:
                self.rds_nonce = resp.nonce
            for name, packed in entries:
                self.routes.add(name if name is not None else _first_string_field(packed.value))
        if self.synced_at is None and self._synced():
            self.synced_at = now
        return out


def _first_string_field(data: bytes) -> str:
    """Field 1 (a string) of a serialized message that starts with it, as Envoy's
    RouteConfiguration.name and ClusterLoadAssignment.cluster_name do."""
    assert data[0] == 0x0A
    length, shift, i = 0, 0, 1
    while True:
        b = data[i]
        length |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    return data[i : i + length].decode()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(clients: int, variant: str, services: int, endpoints: int, timeout: float) -> dict[str, Any]:

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--services", str(services), "--endpoints", str(endpoints)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        rss_idle, _ = _rss_mib(server.pid)
        cpu0 = _cpu_seconds(server.pid)
        per_channel = 20  # streams multiplexed per HTTP/2 connection (Envoy opens one each)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20),
                                                             # its own connection per channel, as each Envoy has
                                                             ("grpc.use_local_subchannel_pool", 1)])
                    for _ in range((clients + per_channel - 1) // per_channel)]
        sims = [Client(i, variant) for i in range(clients)]
        start = time.monotonic()
        tasks = []
        for i, c in enumerate(sims):
            c.started_at = time.monotonic()
            tasks.append(asyncio.create_task(c.run(channels[i // per_channel])))
            if i % OPEN_BATCH == OPEN_BATCH - 1:
                # grpcio's aio client fails a few calls (INTERNAL) when thousands open
                # in one instant; a fleet of proxies does not connect in one instant either.
                await asyncio.sleep(0.05)
        deadline = start + timeout
        while any(c.synced_at is None and not t.done() for c, t in zip(sims, tasks, strict=True)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        if failed:
            print(f"        {len(failed)} client streams failed: {failed[0].exception()!r}"[:300], flush=True)
        synced = [c.synced_at - c.started_at for c in sims if c.synced_at is not None]
        sync_total_from_start = max((c.synced_at - start for c in sims if c.synced_at is not None), default=float("nan"))
        sync_total = sync_total_from_start if len(synced) == clients else float("nan")
        await asyncio.sleep(0.5)  # let ACKs land
        cpu_sync = _cpu_seconds(server.pid) - cpu0
        rss_synced, _ = _rss_mib(server.pid)

        cpu1 = _cpu_seconds(server.pid)
        t0 = time.monotonic()
        for c in sims:
            c.watch_change_after = t0
        server.stdin.write("change\n")
        server.stdin.flush()
        await asyncio.get_running_loop().run_in_executor(None, server.stdout.readline)
        deadline = t0 + timeout
        while any(c.change_seen_at is None and c.synced_at is not None for c in sims) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        lags = [c.change_seen_at - t0 for c in sims if c.change_seen_at is not None]
        await asyncio.sleep(0.3)
        cpu_change = _cpu_seconds(server.pid) - cpu1
        server.stdin.write("status\n")
        server.stdin.flush()
        status = json.loads(await asyncio.get_running_loop().run_in_executor(None, server.stdout.readline))
        _, rss_peak = _rss_mib(server.pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
        return {
            "clients": clients, "variant": variant, "services": services, "endpoints": endpoints,
            "synced": len(synced), "sync_p50_s": _pct(synced, 0.5) if synced else None,
            "sync_p99_s": _pct(synced, 0.99) if synced else None, "sync_all_s": sync_total,
            "change_acked": len(lags), "change_p50_s": _pct(lags, 0.5) if lags else None,
            "change_p99_s": _pct(lags, 0.99) if lags else None, "change_max_s": max(lags) if lags else None,
            "server_cpu_sync_s": round(cpu_sync, 2), "server_cpu_change_s": round(cpu_change, 3),
            "server_rss_idle_mib": round(rss_idle), "server_rss_synced_mib": round(rss_synced), "server_rss_peak_mib": round(rss_peak),
            "streams": status["streams"], "nacks": status["nacks"],
        }
    finally:
        if server.stdin is not None and server.poll() is None:
            try:
                server.stdin.write("quit\n")
                server.stdin.flush()
                server.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                server.kill()
                server.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="100,1000")
    p.add_argument("--variants", default="sotw,delta")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10000)
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each phase, seconds")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.services, args.endpoints))
        return 0
    target = 1.0
    print(f"tulle-control ADS scale: {args.services} services, {args.endpoints} endpoints; target: all clients ACK a change within {target:.1f} s")
    print(f"{'clients':>7} {'mode':>5} {'sync p50':>9} {'sync p99':>9} {'sync all':>9} {'chg p50':>8} {'chg p99':>8} {'chg max':>8} "
          f"{'max/target':>10} {'cpu sync':>8} {'cpu chg':>7} {'rss MiB':>8} {'peak':>6}")
    for clients in (int(c) for c in args.clients.split(",")):
        for variant in args.variants.split(","):
            r = asyncio.run(measure(clients, variant, args.services, args.endpoints, args.timeout))

            def f(v: float | None) -> str:
                return "-" if v is None else f"{v:.3f}"

            ratio = "-" if r["change_max_s"] is None else f"{r['change_max_s'] / target:.2f}"
            print(f"{clients:>7} {variant:>5} {f(r['sync_p50_s']):>9} {f(r['sync_p99_s']):>9} {f(r['sync_all_s']):>9} "
                  f"{f(r['change_p50_s']):>8} {f(r['change_p99_s']):>8} {f(r['change_max_s']):>8} {ratio:>10} "
                  f"{r['server_cpu_sync_s']:>8} {r['server_cpu_change_s']:>7} {r['server_rss_synced_mib']:>8} {r['server_rss_peak_mib']:>6}",
                  flush=True)
            if r["synced"] != clients or r["change_acked"] != clients or r["nacks"]:
                print(f"        incomplete: synced {r['synced']}/{clients}, change seen {r['change_acked']}/{clients}, "
                      f"streams {r['streams']}, NACKs {r['nacks']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
