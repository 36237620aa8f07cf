"""The VXLAN overlay, without I/O: which route, neighbour and FDB entry each
remote node needs.

Theory of operation (flannel's vxlan backend, with static entries and no
learning). Every node owns a pod CIDR and a VTEP: a VXLAN device (VNI 1, UDP
8472) whose address is its pod CIDR's network address (/32) and whose MAC is
derived from its underlay address. For every *other* node N a node installs:
- route   N.pod_cidr via N.vtep_address dev <vxlan> onlink
- neigh   N.vtep_address lladdr N.vtep_mac dev <vxlan> (permanent)
- fdb     N.vtep_mac dst N.underlay_ip dev <vxlan> (permanent)
so a packet for a remote pod is routed to the remote VTEP, resolved to its MAC
without ARP, and encapsulated to the remote node's underlay address without
flooding. One entry of each kind per remote node: the cost grows with nodes,
not pods.

Rules: node names, underlay addresses and pod CIDRs are unique and pod CIDRs do
not overlap; a bad node list is refused whole, naming the entry and field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

VXLAN_PORT = 8472
VXLAN_VNI = 1
VXLAN_DEVICE = "tulle.vx"
VXLAN_OVERHEAD = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)


class NodeListError(ValueError):
    """A node list that cannot be programmed; the message names the field."""


@dataclass(frozen=True)
class OverlayNode:
    name: str
    underlay_ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    vtep_mac: str

    @property
    def vtep_address(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address


@dataclass(frozen=True)
class PeerEntries:
    """What one remote node needs on this node's VXLAN device."""

    node: str
    route_dst: ipaddress.IPv4Network
    via: ipaddress.IPv4Address
    mac: str
    underlay_ip: ipaddress.IPv4Address


def vtep_mac_for(underlay_ip: ipaddress.IPv4Address) -> str:
    """A stable, locally administered unicast MAC: 0e:74 + the underlay address."""
    return "0e:74:" + ":".join(f"{b:02x}" for b in underlay_ip.packed)


def parse_nodes(raw: Any) -> list[OverlayNode]:
    """A node list in tulle.netpolicy.v1.Node's JSON form (camelCase or proto names)."""
    if not isinstance(raw, list):
        raise NodeListError("nodes: expected a list of Node objects")
    nodes = []
    for i, item in enumerate(raw):
        where = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise NodeListError(f"{where}: expected an object")
        unknown = set(item) - {"name", "underlayIp", "underlay_ip", "podCidr", "pod_cidr", "vtepMac", "vtep_mac"}
        if unknown:
            raise NodeListError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise NodeListError(f"{where}.name: expected a non-empty string")
        try:
            underlay = ipaddress.IPv4Address(item.get("underlayIp", item.get("underlay_ip")))
        except ValueError:
            raise NodeListError(f"{where}.underlayIp: expected an IPv4 address") from None
        try:
            cidr = ipaddress.IPv4Network(item.get("podCidr", item.get("pod_cidr")), strict=True)
        except (TypeError, ValueError) as exc:
            raise NodeListError(f"{where}.podCidr: expected an IPv4 network in CIDR form ({exc})") from None
        mac = item.get("vtepMac", item.get("vtep_mac")) or vtep_mac_for(underlay)
        if not isinstance(mac, str) or len(mac.split(":")) != 6:
            raise NodeListError(f"{where}.vtepMac: expected a MAC address such as 0e:74:c0:a8:00:01")
        nodes.append(OverlayNode(name, underlay, cidr, mac.lower()))
    check_nodes(nodes)
    return nodes


def nodes_from_messages(messages: Iterable[Any]) -> list[OverlayNode]:
    """The node list from tulle.netpolicy.v1.Node messages (as the ADS stream will
    deliver them), under the same rules as the JSON form."""
    return parse_nodes(
        [
            {"name": m.name, "underlayIp": m.underlay_ip, "podCidr": m.pod_cidr, "vtepMac": m.vtep_mac}
            for m in messages
        ]
    )


def check_nodes(nodes: Sequence[OverlayNode]) -> None:
    seen_names: set[str] = set()
    seen_ips: set[ipaddress.IPv4Address] = set()
    for i, node in enumerate(nodes):
        if node.name in seen_names:
            raise NodeListError(f"nodes[{i}].name: {node.name!r} appears twice")
        if node.underlay_ip in seen_ips:
            raise NodeListError(f"nodes[{i}].underlayIp: {node.underlay_ip} appears twice")
        for other in nodes[:i]:
            if node.pod_cidr.overlaps(other.pod_cidr):
                raise NodeListError(f"nodes[{i}].podCidr: {node.pod_cidr} overlaps {other.name}'s {other.pod_cidr}")
        seen_names.add(node.name)
        seen_ips.add(node.underlay_ip)


def peer_entries(self_name: str, nodes: Sequence[OverlayNode]) -> list[PeerEntries]:
    return [
        PeerEntries(n.name, n.pod_cidr, n.vtep_address, n.vtep_mac, n.underlay_ip)
        for n in nodes
        if n.name != self_name
    ]
