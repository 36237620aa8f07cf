"""The direct conformance backends: pods as network namespaces on one node's bridge,
policies compiled and applied straight into the node's namespace (no control plane).

Topology: a node namespace holding a bridge; every pod is a namespace joined to it by a
veth pair; with several nodes, each node's bridge also holds a VXLAN port to the others
(over an underlay bridge in its own namespace), so pods on different nodes share one L2
segment and their traffic crosses the forward hook of *both* nodes. Pods are addressed
10.244.<namespace index>.<10 + pod index>/16 (one pod CIDR, so the corpus's /4
placeholders cover every pod). Each pod serves its TCP and UDP container
ports from this process: sockets are opened inside the pod's namespace and served by
the caller's asyncio loop (TCP: accept, send the pod's name, close; UDP: reply with the
pod's name). Bridged traffic crosses the node's inet forward hook (br_netfilter), which
is where the ruleset sits.

Namespaces and links come from a `Provisioner` (the test suite's kernel fixture fits it),
which owns their cleanup; this module stops its servers and removes pod namespaces it no
longer needs when the topology changes.
"""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any, Protocol

from netpolicy.applier import NftApplier
from netpolicy.cluster import ClusterState
from netpolicy.compiler import compile_ruleset
from netpolicy.conformance.corpus import PodRef, Probe, Step, Topology
from netpolicy.conformance.runner import Placement
from netpolicy.conformance.servers import close_servers, probe_answers, serve_ports
from netpolicy.model import Protocol as L4
from netpolicy.ruleset import Ruleset, diff_document, full_document

POD_PREFIX = 16
VXLAN_ID = 4242
VXLAN_MTU = 1450  # 1500 minus VXLAN's 50 bytes of encapsulation


def _underlay_ip(index: int) -> str:
    return f"192.168.200.{index + 1}"


class Provisioner(Protocol):
    def netns(self, prefix: str = ...) -> str: ...

    def veth(self, ns_a: str | None, ns_b: str | None) -> tuple[str, str]: ...

    def bridge(self, ns: str | None) -> str: ...


def _ip(netns: str, *args: str) -> None:
    done = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip -n {netns} {' '.join(args)}: {done.stderr.strip()}")


def address_plan(topology: Topology) -> dict[PodRef, ipaddress.IPv4Address]:
    index = {ns.name: i for i, ns in enumerate(topology.namespaces)}
    seen: dict[str, int] = {}
    plan = {}
    for pod in topology.pods:
        n = seen.get(pod.namespace, 0)
        seen[pod.namespace] = n + 1
        plan[(pod.namespace, pod.name)] = ipaddress.IPv4Address(f"10.244.{index[pod.namespace]}.{10 + n}")
    return plan


class DirectTopology:
    """Pods on their node's bridge; with several nodes, the bridges are joined into one
    L2 segment by VXLAN over an underlay bridge (pods are spread round-robin)."""

    def __init__(self, provisioner: Provisioner, node: str = "node-1", nodes: int = 1) -> None:
        self.provisioner = provisioner
        self.node = node
        self.node_names = [node] + [f"node-{i + 1}" for i in range(1, nodes)] if nodes > 1 else [node]
        self.node_netns_by_node: dict[str, str] = {}
        self._bridges: dict[str, str] = {}
        self._topology: Topology | None = None
        self._placement: Placement | None = None
        self._pod_netns: dict[PodRef, str] = {}
        self._servers: list[Any] = []

    async def bring_up(self, topology: Topology) -> Placement:
        if self._topology == topology and self._placement is not None:
            return self._placement
        await self.tear_down_pods()
        if not self.node_netns_by_node:
            self._build_nodes()
        plan = address_plan(topology)
        nodes = {}
        for i, pod in enumerate(topology.pods):
            ref = (pod.namespace, pod.name)
            node = self.node_names[i % len(self.node_names)]
            nodes[ref] = node
            node_netns = self.node_netns_by_node[node]
            netns = self.provisioner.netns("nppod")
            self._pod_netns[ref] = netns
            inside, outside = self.provisioner.veth(netns, node_netns)
            _ip(netns, "addr", "add", f"{plan[ref]}/{POD_PREFIX}", "dev", inside)
            if len(self.node_names) > 1:
                _ip(netns, "link", "set", inside, "mtu", str(VXLAN_MTU))
            _ip(node_netns, "link", "set", outside, "master", self._bridges[node])
            await self._serve(netns, f"{pod.namespace}/{pod.name}", pod.ports)
        self._topology = topology
        self._placement = Placement(plan, nodes)
        return self._placement

    def pod_netns(self, ref: PodRef) -> str:
        """The network namespace of a pod of the current topology."""
        return self._pod_netns[ref]

    @property
    def node_netns(self) -> str | None:
        """The first node's namespace (the only one in a single-node topology)."""
        return self.node_netns_by_node.get(self.node)

    def _build_nodes(self) -> None:
        underlay = self.provisioner.netns("npunder") if len(self.node_names) > 1 else None
        underlay_bridge = self.provisioner.bridge(underlay) if underlay else None
        for i, node in enumerate(self.node_names):
            netns = self.provisioner.netns("npnode")
            self.node_netns_by_node[node] = netns
            self._bridges[node] = self.provisioner.bridge(netns)
            # Bridged IPv4 must cross the inet forward hook (the default in a new
            # namespace; set explicitly so the ruleset can never be bypassed).
            subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                            "net.bridge.bridge-nf-call-iptables=1"], check=True)
            if underlay is not None and underlay_bridge is not None:
                inside, outside = self.provisioner.veth(netns, underlay)
                _ip(underlay, "link", "set", outside, "master", underlay_bridge)
                _ip(netns, "addr", "add", f"{_underlay_ip(i)}/24", "dev", inside)
                _ip(netns, "link", "add", "vx0", "type", "vxlan", "id", str(VXLAN_ID), "dstport", "4789",
                    "local", _underlay_ip(i), "dev", inside)
                for j in range(len(self.node_names)):
                    if j != i:  # head-end replication of broadcasts to every other node
                        subprocess.run(["bridge", "-n", netns, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0",
                                        "dst", _underlay_ip(j)], check=True)
                _ip(netns, "link", "set", "vx0", "master", self._bridges[node])
                _ip(netns, "link", "set", "vx0", "up")

    async def _serve(self, netns: str, name: str, ports: Any) -> None:
        self._servers += await serve_ports(netns, name.encode() + b"\n", ports)

    async def tear_down_pods(self) -> None:
        await close_servers(self._servers)
        for netns in self._pod_netns.values():
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self._pod_netns.clear()
        self._topology = self._placement = None

    def can_probe(self, protocol: L4) -> bool:
        return protocol in (L4.TCP, L4.UDP)

    async def probe(self, probe: Probe, timeout: float) -> bool:
        assert self._placement is not None
        address = (str(self._placement.ips[probe.dst]), probe.port)
        return await probe_answers(self._pod_netns[probe.src], address, probe.protocol, timeout)


class DirectPolicy:
    """Compiles the state for every node of the topology and applies each node's ruleset
    in its namespace: the whole table on reset, element diffs afterwards."""

    def __init__(self, topology: DirectTopology) -> None:
        self.topology = topology
        self._appliers: dict[str, NftApplier] = {}
        self._previous: dict[str, Ruleset] = {}
        self.transactions = 0

    def _nft(self, node: str) -> NftApplier:
        if node not in self._appliers:
            netns = self.topology.node_netns_by_node.get(node)
            assert netns is not None, "bring the topology up first"
            self._appliers[node] = NftApplier(netns)
        return self._appliers[node]

    async def reset(self, state: ClusterState) -> None:
        for node in self.topology.node_names:
            ruleset = compile_ruleset(state, node)
            self._nft(node).apply(full_document(ruleset))
            self._previous[node] = ruleset
            self.transactions += 1

    async def apply(self, state: ClusterState, step: Step) -> None:
        for node in self.topology.node_names:
            previous = self._previous.get(node)
            ruleset = compile_ruleset(state, node, previous)
            self._nft(node).apply(full_document(ruleset) if previous is None else diff_document(previous, ruleset))
            self._previous[node] = ruleset
            self.transactions += 1
            self._forget_flows(node)

    def _forget_flows(self, node: str) -> None:
        """Empties the node's conntrack table. The ruleset accepts established flows first (as
        Calico and Cilium do: a policy need not cut what it already let through), and a UDP
        probe is a new flow only while its 5-tuple is: one that drew the same ephemeral port as
        an earlier allowed probe to the same pod and port would pass as established (seen
        once in ~30 runs, on np-udp-default-deny-ingress). Each step's probes are new flows."""
        netns = self.topology.node_netns_by_node[node]
        subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-F"], check=True, capture_output=True)
