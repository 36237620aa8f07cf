"""SCTP is enforced by protocol number even though this kernel has no SCTP sockets:
hand-made SCTP packets (raw IP protocol 132) cross the node only where policy allows."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from netpolicy.applier import NftApplier
from netpolicy.cluster import ClusterState
from netpolicy.conformance.corpus import initial_state, parse_topology
from netpolicy.conformance.direct import DirectTopology
from netpolicy.enforcer import NodeEnforcer
from netpolicy.model import parse_policy
from netpolicy.netns import socket_in
from tests.kernel import KernelResources

pytestmark = pytest.mark.privileged

SCTP = 132
TOPOLOGY = parse_topology({"namespaces": {"x": {"labels": {"kubernetes.io/metadata.name": "x"}, "pods": {
    name: {"labels": {"pod": name}, "ports": [{"name": "assoc", "port": 80, "protocol": "SCTP"}]} for name in "abc"
}}}}, "inline")
ALLOW_SCTP_80_FROM_A = parse_policy({
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "sctp-from-a", "namespace": "x"},
    "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"protocol": "SCTP", "port": 80}]}]},
})


def sctp_init(source_port: int, destination_port: int) -> bytes:
    """An SCTP common header and an INIT chunk (checksum left zero: conntrack may call it
    invalid, which policy must not care about — the verdict is by protocol and port)."""
    header = struct.pack("!HHII", source_port, destination_port, 0, 0)
    init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234, 65535, 1, 1, 1)
    return header + init


@pytest.fixture
def cluster(kernel: KernelResources) -> Iterator[tuple[DirectTopology, ClusterState]]:
    loop = asyncio.new_event_loop()
    topology = DirectTopology(kernel)
    placement = loop.run_until_complete(topology.bring_up(TOPOLOGY))
    try:
        yield topology, initial_state(TOPOLOGY, placement.ips, placement.nodes)
    finally:
        loop.run_until_complete(topology.tear_down_pods())
        loop.close()


def arrives(topology: DirectTopology, state: ClusterState, src: str, dst: str, port: int) -> bool:
    source, target = state.pods[("x", src)], state.pods[("x", dst)]
    receiver = socket_in(topology.pod_netns(("x", dst)), socket.SOCK_RAW, SCTP)
    sender = socket_in(topology.pod_netns(("x", src)), socket.SOCK_RAW, SCTP)
    try:
        sender.sendto(sctp_init(40000, port), (str(target.ip), 0))
        deadline = time.monotonic() + 0.5
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([receiver], [], [], left)[0]:
                break
            packet = receiver.recv(2048)
            header_length = (packet[0] & 0x0F) * 4
            seen_from = socket.inet_ntoa(packet[12:16])
            (seen_port,) = struct.unpack("!H", packet[header_length + 2:header_length + 4])
            if seen_from == str(source.ip) and seen_port == port:
                return True
        return False
    finally:
        sender.close()
        receiver.close()


def test_sctp_rule_admits_only_its_peer_and_port(cluster: tuple[DirectTopology, ClusterState]) -> None:
    topology, state = cluster
    assert topology.node_netns is not None
    enforcer = NodeEnforcer(topology.node, NftApplier(topology.node_netns))
    enforcer.start(state)
    assert arrives(topology, state, "c", "b", 80)  # no policy: everything passes
    enforcer.update(state.with_policy(ALLOW_SCTP_80_FROM_A))
    assert arrives(topology, state, "a", "b", 80)
    assert not arrives(topology, state, "c", "b", 80)
    assert not arrives(topology, state, "a", "b", 81)
