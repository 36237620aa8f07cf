"""Programs the overlay (`cni.overlay`) into the node's namespace over netlink.

`VxlanOverlay.apply(self_node, nodes)` is a reconciliation: it creates the VXLAN
device if needed, then adds the route/neighbour/FDB entries that are missing and
deletes the ones no longer wanted, so applying the same node list twice changes
nothing and a removed node leaves no trace. Only entries on Tulle's VXLAN device
are ever touched.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.bridge import find_link, step
from cni.overlay import (
    VXLAN_DEVICE,
    VXLAN_OVERHEAD,
    VXLAN_PORT,
    VXLAN_VNI,
    NodeListError,
    OverlayNode,
    peer_entries,
)

_RTPROT_STATIC = 4
_MAIN_TABLE = 254
_NUD_PERMANENT = 0x80
_AF_BRIDGE = 7


@dataclass(frozen=True)
class OverlayState:
    routes: frozenset[tuple[str, str]]  # (dst, via)
    neighbours: frozenset[tuple[str, str]]  # (ip, mac)
    fdb: frozenset[tuple[str, str]]  # (mac, underlay ip)


class VxlanOverlay:
    def __init__(self, ipr: IPRoute, device: str = VXLAN_DEVICE, underlay_mtu: int = 1500) -> None:
        self.ipr = ipr
        self.device = device
        self.mtu = underlay_mtu - VXLAN_OVERHEAD

    def apply(self, self_name: str, nodes: list[OverlayNode]) -> None:
        me = next((n for n in nodes if n.name == self_name), None)
        if me is None:
            raise NodeListError(f"nodes: no entry for this node ({self_name!r})")
        index = self._ensure_device(me)
        peers = peer_entries(self_name, nodes)
        want = OverlayState(
            routes=frozenset((str(p.route_dst), str(p.via)) for p in peers),
            neighbours=frozenset((str(p.via), p.mac) for p in peers),
            fdb=frozenset((p.mac, str(p.underlay_ip)) for p in peers),
        )
        have = self.read(index)
        # Order matters for traffic already flowing: FDB and neighbour before route.
        for mac, dst in sorted(want.fdb - have.fdb):
            with step(f"add FDB entry {mac} -> {dst} on {self.device}"):
                self.ipr.fdb("add", ifindex=index, lladdr=mac, dst=dst)
        for ip, mac in sorted(want.neighbours - have.neighbours):
            with step(f"add neighbour {ip} -> {mac} on {self.device}"):
                self.ipr.neigh("replace", ifindex=index, dst=ip, lladdr=mac, state=_NUD_PERMANENT)
        for dst, via in sorted(want.routes - have.routes):
            with step(f"add route {dst} via {via} on {self.device}"):
                self.ipr.route(
                    "replace", dst=dst, gateway=via, oif=index, flags=4, proto=_RTPROT_STATIC  # 4: RTNH_F_ONLINK
                )
        for dst, via in sorted(have.routes - want.routes):
            with step(f"delete route {dst} via {via} on {self.device}"):
                _ignore_missing(self.ipr.route, "del", dst=dst, gateway=via, oif=index)
        for ip, mac in sorted(have.neighbours - want.neighbours):
            with step(f"delete neighbour {ip} on {self.device}"):
                _ignore_missing(self.ipr.neigh, "del", ifindex=index, dst=ip, lladdr=mac)
        for mac, dst in sorted(have.fdb - want.fdb):
            with step(f"delete FDB entry {mac} on {self.device}"):
                _ignore_missing(self.ipr.fdb, "del", ifindex=index, lladdr=mac, dst=dst)

    def read(self, index: int) -> OverlayState:
        with step(f"read routes of {self.device}"):
            routes = frozenset(
                (f"{r.get('dst')}/{r['dst_len']}", r.get("gateway"))
                for r in self.ipr.get_routes(family=socket.AF_INET, oif=index)
                if r.get("table") == _MAIN_TABLE and r["proto"] == _RTPROT_STATIC and r.get("gateway")
            )
        with step(f"read neighbours of {self.device}"):
            neighbours = frozenset(
                (n.get("dst"), n.get("lladdr"))
                for n in self.ipr.get_neighbours(family=socket.AF_INET, ifindex=index)
                if n["state"] & _NUD_PERMANENT
            )
        with step(f"read FDB of {self.device}"):
            fdb = frozenset(
                (n.get("lladdr"), n.get("dst"))
                for n in self.ipr.fdb("dump", ifindex=index)
                if n.get("dst") and n["ifindex"] == index
            )
        return OverlayState(routes, neighbours, fdb)

    def _ensure_device(self, me: OverlayNode) -> int:
        with step(f"look up {self.device}"):
            link = find_link(self.ipr, self.device)
        if link is None:
            with step(f"create VXLAN device {self.device} (VNI {VXLAN_VNI}, UDP {VXLAN_PORT}, local {me.underlay_ip})"):
                self.ipr.link(
                    "add",
                    ifname=self.device,
                    kind="vxlan",
                    vxlan_id=VXLAN_VNI,
                    vxlan_local=str(me.underlay_ip),
                    vxlan_port=VXLAN_PORT,
                    vxlan_learning=0,
                    address=me.vtep_mac,
                    mtu=self.mtu,
                )
            with step(f"look up {self.device}"):
                link = find_link(self.ipr, self.device)
            assert link is not None
        vtep = ipaddress.IPv4Interface(f"{me.vtep_address}/32")
        with step(f"add address {vtep} to {self.device}"):
            present = {a.get("address") for a in self.ipr.get_addr(index=link.index, family=socket.AF_INET)}
            if str(vtep.ip) not in present:
                self.ipr.addr("add", index=link.index, address=str(vtep.ip), prefixlen=32)
        with step(f"bring {self.device} up"):
            self.ipr.link("set", index=link.index, state="up")
        return link.index


def _ignore_missing(action: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    try:
        action(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            raise
