"""The direct conformance backends: pods as network namespaces on one node's bridge,
policies compiled and applied straight into the node's namespace (no control plane).

Topology: a node namespace holding a bridge; every pod is a namespace joined to it by a
veth pair, addressed 10.244.<namespace index>.<10 + pod index>/16 (one pod CIDR, so the
corpus's /4 placeholders cover every pod). Each pod serves its TCP and UDP container
ports from this process: sockets are opened inside the pod's namespace and served by
the caller's asyncio loop (TCP: accept, send the pod's name, close; UDP: reply with the
pod's name). Bridged traffic crosses the node's inet forward hook (br_netfilter), which
is where the ruleset sits.

Namespaces and links come from a `Provisioner` (the test suite's kernel fixture fits it),
which owns their cleanup; this module stops its servers and removes pod namespaces it no
longer needs when the topology changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import subprocess
from typing import Any, Protocol

from netpolicy.applier import NftApplier
from netpolicy.cluster import ClusterState
from netpolicy.compiler import compile_ruleset
from netpolicy.conformance.corpus import PodRef, Probe, Step, Topology
from netpolicy.conformance.runner import Placement
from netpolicy.model import Protocol as L4
from netpolicy.netns import socket_in
from netpolicy.ruleset import Ruleset, diff_document, full_document

POD_PREFIX = 16


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


class _UDPReply(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(self.name, addr)


class DirectTopology:
    """One node; pods on its bridge."""

    def __init__(self, provisioner: Provisioner, node: str = "node-1") -> None:
        self.provisioner = provisioner
        self.node = node
        self.node_netns: str | None = None
        self._bridge: str | None = None
        self._topology: Topology | None = None
        self._placement: Placement | None = None
        self._pod_netns: dict[PodRef, str] = {}
        self._servers: list[Any] = []

    async def bring_up(self, topology: Topology) -> Placement:
        if self._topology == topology and self._placement is not None:
            return self._placement
        await self.tear_down_pods()
        if self.node_netns is None:
            self.node_netns = self.provisioner.netns("npnode")
            self._bridge = self.provisioner.bridge(self.node_netns)
            # Bridged IPv4 must cross the inet forward hook (the default in a new
            # namespace; set explicitly so the ruleset can never be bypassed).
            subprocess.run(["ip", "netns", "exec", self.node_netns, "sysctl", "-qw",
                            "net.bridge.bridge-nf-call-iptables=1"], check=True)
        plan = address_plan(topology)
        for pod in topology.pods:
            ref = (pod.namespace, pod.name)
            netns = self.provisioner.netns("nppod")
            self._pod_netns[ref] = netns
            inside, outside = self.provisioner.veth(netns, self.node_netns)
            _ip(netns, "addr", "add", f"{plan[ref]}/{POD_PREFIX}", "dev", inside)
            _ip(self.node_netns, "link", "set", outside, "master", str(self._bridge))
            await self._serve(netns, f"{pod.namespace}/{pod.name}", pod.ports)
        self._topology = topology
        self._placement = Placement(plan, dict.fromkeys(plan, self.node))
        return self._placement

    async def _serve(self, netns: str, name: str, ports: Any) -> None:
        loop = asyncio.get_running_loop()
        reply = name.encode() + b"\n"

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                writer.write(reply)
                await writer.drain()
            writer.close()

        for port in ports:
            if port.protocol is L4.TCP:
                sock = socket_in(netns, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port.port))
                self._servers.append(await asyncio.start_server(answer, sock=sock, backlog=256))
            elif port.protocol is L4.UDP:
                sock = socket_in(netns, socket.SOCK_DGRAM)
                sock.bind(("0.0.0.0", port.port))
                transport, _ = await loop.create_datagram_endpoint(lambda: _UDPReply(reply), sock=sock)
                self._servers.append(transport)
            # SCTP: no sockets on this kernel; the port exists in the model only.

    async def tear_down_pods(self) -> None:
        for server in self._servers:
            server.close()
            if isinstance(server, asyncio.AbstractServer):
                await server.wait_closed()
        self._servers.clear()
        for netns in self._pod_netns.values():
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self._pod_netns.clear()
        self._topology = self._placement = None

    def can_probe(self, protocol: L4) -> bool:
        return protocol in (L4.TCP, L4.UDP)

    async def probe(self, probe: Probe, timeout: float) -> bool:
        assert self._placement is not None
        loop = asyncio.get_running_loop()
        address = (str(self._placement.ips[probe.dst]), probe.port)
        kind = socket.SOCK_STREAM if probe.protocol is L4.TCP else socket.SOCK_DGRAM
        sock = socket_in(self._pod_netns[probe.src], kind)
        try:
            if probe.protocol is L4.TCP:
                await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
                return True
            sock.connect(address)
            await loop.sock_sendall(sock, b"hostname\n")
            return bool(await asyncio.wait_for(loop.sock_recv(sock, 512), timeout))
        except (TimeoutError, OSError):
            return False
        finally:
            sock.close()


class DirectPolicy:
    """Compiles the state for the topology's node and applies it in the node's namespace:
    the whole table on reset, element diffs afterwards."""

    def __init__(self, topology: DirectTopology) -> None:
        self.topology = topology
        self._applier: NftApplier | None = None
        self._previous: Ruleset | None = None
        self.transactions = 0

    def _nft(self) -> NftApplier:
        if self._applier is None:
            assert self.topology.node_netns is not None, "bring the topology up first"
            self._applier = NftApplier(self.topology.node_netns)
        return self._applier

    async def reset(self, state: ClusterState) -> None:
        ruleset = compile_ruleset(state, self.topology.node)
        self._nft().apply(full_document(ruleset))
        self._previous = ruleset
        self.transactions += 1

    async def apply(self, state: ClusterState, step: Step) -> None:
        ruleset = compile_ruleset(state, self.topology.node, self._previous)
        self._nft().apply(full_document(ruleset) if self._previous is None else diff_document(self._previous, ruleset))
        self._previous = ruleset
        self.transactions += 1
