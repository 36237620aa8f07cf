"""`meshctl netpol conformance`: the NetworkPolicy conformance corpus, run through the
real path — a lab with tulle-control, objects applied through the config API, policies
pushed over ADS, compiled and applied by every node's tulle-agent, probes between pods.

Theory of operation (the backends of `netpolicy.conformance.runner`):
- One lab for the whole run (`--nodes N`), torn down at the end whatever happens.
- `bring_up(topology)`: namespaces (with their labels) and pods are created through the
  lab (objects in tulle-control first, then CNI ADD on a node, round-robin over the
  nodes), each pod's TCP and UDP ports served from this process inside the pod's
  namespace. The topology is kept while consecutive cases share it.
- `reset`/`apply`: every change goes through the config API (NetworkPolicies and the
  cluster-scoped AdminNetworkPolicies and BaselineAdminNetworkPolicy alike); then the
  backend waits until every agent has ACKed the exact resourceVersion of every object
  involved (and has dropped the deleted ones), read over CSDS
  (`control.meshctl.enforcement`). An agent ACKs only what it compiled and committed to
  the kernel, so once that holds, the rules are in force on every node — no sleeps, no
  guessing.
- Probes are made from this process with sockets opened inside the source pod's namespace
  (TCP: a completed handshake; UDP: a reply); SCTP is not probed (no SCTP sockets here).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from cni.lab import Lab
from cni.lab.topology import LabPod
from control.meshctl import enforcement
from netpolicy.cluster import ClusterState
from netpolicy.conformance.corpus import PodRef, Probe, Step, Topology, resolve_placeholders
from netpolicy.conformance.runner import Placement
from netpolicy.conformance.servers import close_servers, probe_answers, serve_ports
from netpolicy.model import Protocol as L4

SYNC_TIMEOUT = 60.0
Wanted = dict[tuple[str, str], str | None]  # (kind, "<ns>/<name>" or name) -> resourceVersion | None (gone)
ADMIN_KINDS = ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy")  # cluster-scoped


class SyncTimeout(RuntimeError):
    pass


class LabBackend:
    """Both runner backends (topology and policy) over one lab with a control plane."""

    def __init__(self, nodes: int, name: str | None = None) -> None:
        self.node_count = nodes
        self.name = name or f"nc{secrets.token_hex(3)}"
        self.lab: Lab | None = None
        self.xds = ""
        self.syncs = 0
        self.sync_seconds = 0.0
        self._topology: Topology | None = None
        self._placement: Placement | None = None
        self._pods: dict[PodRef, LabPod] = {}
        self._servers: list[Any] = []
        self._gone: Wanted = {}

    # ------------------------------------------------------------------ lifecycle
    def up(self) -> None:
        self.lab = Lab.up(self.name, self.node_count, control=True)
        self.xds = self.lab.control_addresses()["TULLE_XDS_ADDRESS"]

    async def down(self) -> list[str]:
        await self._stop_servers()
        if self.lab is None:
            return []
        return await asyncio.to_thread(Lab(self.name, self.lab.root).down)

    # ------------------------------------------------------------------ topology
    async def bring_up(self, topology: Topology) -> Placement:
        if self._topology == topology and self._placement is not None:
            return self._placement
        lab = self._lab()
        await self._stop_servers()
        for ref in list(self._pods):
            await asyncio.to_thread(lab.delete_pod, *ref)
            self._gone[("Pod", f"{ref[0]}/{ref[1]}")] = None
        self._pods.clear()
        nodes = [n.name for n in lab.nodes()]
        for ns in topology.namespaces:
            await asyncio.to_thread(lab.set_namespace_labels, ns.name, dict(ns.labels))
        for i, pod in enumerate(topology.pods):
            ports = [{"name": p.name, "containerPort": p.port, "protocol": p.protocol.value}
                     if p.name else {"containerPort": p.port, "protocol": p.protocol.value} for p in pod.ports]
            added = await asyncio.to_thread(lab.add_pod, pod.namespace, pod.name, nodes[i % len(nodes)],
                                            dict(pod.labels), (), ports)
            self._pods[(pod.namespace, pod.name)] = added
            self._gone.pop(("Pod", f"{pod.namespace}/{pod.name}"), None)
            await self._serve(added, pod.ports)
        self._topology = topology
        self._placement = Placement({r: p.ip for r, p in self._pods.items()}, {r: p.node for r, p in self._pods.items()})
        return self._placement

    def can_probe(self, protocol: L4) -> bool:
        return protocol in (L4.TCP, L4.UDP)

    async def probe(self, probe: Probe, timeout: float) -> bool:
        address = (str(self._pods[probe.dst].ip), probe.port)
        return await probe_answers(self._pods[probe.src].netns, address, probe.protocol, timeout)

    # ------------------------------------------------------------------ policy
    async def reset(self, state: ClusterState) -> None:
        """The topology's labels and no policies, in force on every node."""
        lab, topology = self._lab(), self._topology
        assert topology is not None
        with lab.api() as api:
            for kind in ADMIN_KINDS:
                for doc in await asyncio.to_thread(api.list, kind, ""):
                    await asyncio.to_thread(api.delete, kind, "", doc["metadata"]["name"])
                    self._gone[(kind, doc["metadata"]["name"])] = None
            for ns in topology.namespaces:
                for doc in await asyncio.to_thread(api.list, "NetworkPolicy", ns.name):
                    await asyncio.to_thread(api.delete, "NetworkPolicy", ns.name, doc["metadata"]["name"])
                    self._gone[("NetworkPolicy", f"{ns.name}/{doc['metadata']['name']}")] = None
        for ns in topology.namespaces:
            if lab.namespace_labels(ns.name) != dict(ns.labels):
                await asyncio.to_thread(lab.set_namespace_labels, ns.name, dict(ns.labels))
        for pod in topology.pods:
            if lab.pod(pod.namespace, pod.name).labels != dict(pod.labels):
                await asyncio.to_thread(lab.set_pod_labels, pod.namespace, pod.name, dict(pod.labels))
        await asyncio.to_thread(self._wait_in_force)

    async def apply(self, state: ClusterState, step: Step) -> None:
        lab = self._lab()
        ip_of = self._placement.ips.__getitem__ if self._placement else None
        assert ip_of is not None
        with lab.api() as api:
            for doc in step.apply:
                kind, meta = doc.get("kind"), doc.get("metadata") or {}
                if kind == "Namespace":
                    await asyncio.to_thread(lab.set_namespace_labels, meta["name"], dict(meta.get("labels") or {}))
                elif kind == "Pod":
                    await asyncio.to_thread(lab.set_pod_labels, meta["namespace"], meta["name"], dict(meta.get("labels") or {}))
                else:
                    await asyncio.to_thread(api.apply, resolve_placeholders(doc, ip_of))
                    name = meta["name"] if kind in ADMIN_KINDS else f"{meta.get('namespace', 'default')}/{meta['name']}"
                    self._gone.pop((str(kind), name), None)
            for kind, namespace, name in step.delete:
                await asyncio.to_thread(api.delete, kind, namespace or "", name)
                self._gone[(kind, f"{namespace}/{name}" if namespace else name)] = None
        await asyncio.to_thread(self._wait_in_force)
        await asyncio.to_thread(self._forget_flows)

    def _forget_flows(self) -> None:
        """Empties every node's conntrack table, as the direct backend does after each step
        (netpolicy/conformance/direct.py): the rulesets accept established flows first, so a
        UDP probe that drew an earlier allowed probe's source port would pass as established
        (seen once, np-udp-default-deny-ingress through the control plane)."""
        for node in self._lab().nodes():
            subprocess.run(["ip", "netns", "exec", node.netns, "conntrack", "-F"], check=True, capture_output=True)

    # ------------------------------------------------------------------ in force
    def _wait_in_force(self) -> None:
        """Until every agent holds every object of the run at its current version."""
        started = time.monotonic()
        deadline = started + SYNC_TIMEOUT
        wanted: Wanted | None = None
        lagging = "the pods' addresses"
        while True:
            if wanted is None:
                wanted = self._wanted()  # None while a pod's address is not reported yet
            if wanted is not None:
                held = enforcement.read(self.xds)
                if len(held.agents) == self.node_count and held.all_hold(wanted):
                    self.syncs += 1
                    self.sync_seconds += time.monotonic() - started
                    return
                lagging = _lagging(held, wanted)
            if time.monotonic() > deadline:
                raise SyncTimeout(f"not in force on every node after {SYNC_TIMEOUT:.0f}s: {lagging}")
            time.sleep(0.005)

    def _wanted(self) -> Wanted | None:
        lab, topology = self._lab(), self._topology
        assert topology is not None
        wanted: Wanted = dict(self._gone)
        with lab.api() as api:
            for kind in ADMIN_KINDS:
                for d in api.list(kind, ""):
                    wanted[(kind, d["metadata"]["name"])] = d["metadata"]["resourceVersion"]
            for ns in topology.namespaces:
                doc = api.get("Namespace", "", ns.name)
                assert doc is not None
                wanted[("Namespace", ns.name)] = doc["metadata"]["resourceVersion"]
                for kind in ("Pod", "NetworkPolicy"):
                    for d in api.list(kind, ns.name):
                        if kind == "Pod" and not (d.get("status") or {}).get("podIP"):
                            return None
                        wanted[(kind, f"{ns.name}/{d['metadata']['name']}")] = d["metadata"]["resourceVersion"]
        return wanted

    # ------------------------------------------------------------------ helpers
    def _lab(self) -> Lab:
        assert self.lab is not None, "LabBackend.up() first"
        return self.lab

    async def _serve(self, pod: LabPod, ports: Any) -> None:
        self._servers += await serve_ports(pod.netns, f"{pod.namespace}/{pod.name}\n".encode(), ports)

    async def _stop_servers(self) -> None:
        await close_servers(self._servers)


def _lagging(held: enforcement.Enforcement, wanted: Mapping[tuple[str, str], str | None]) -> str:
    out = []
    for (kind, name), version in sorted(wanted.items(), key=str):
        holders = held.held.get((kind, name), {})
        behind = [a for a in held.agents if holders.get(a) != version]
        if behind:
            out.append(f"{kind} {name}@{version or 'deleted'} on {', '.join(behind)}")
    return "; ".join(out[:5]) or f"{len(held.agents)} agent(s) connected"
