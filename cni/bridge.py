"""The node bridge and the pod's veth pair, over netlink (pyroute2).

Layout on a node: one bridge per network (default `tulle0`) holding the pod
gateway address; per attachment a veth pair whose host end (`tlv` + 12 hex of a
hash of network/container/interface, so DEL and crash recovery find it without
state) is a bridge port, and whose other end is created directly inside the pod's
namespace under the runtime's interface name (no rename dance, no name clash in
the node namespace).

Each step is a named method; a netlink failure becomes a CniError that says what
was being done to which object. Undoing is the caller's job (`cni.backend`),
which knows what this ADD created.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.errors import CniError, ErrorCode
from cni.result import Route

HOST_IFNAME_PREFIX = "tlv"
_BRPORT_MODE_HAIRPIN = 1
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def host_ifname(network: str, container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
    return HOST_IFNAME_PREFIX + digest[:12]


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mac: str
    master: int | None = None
    mtu: int | None = None


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Turns a kernel error into a CniError naming the step and its object."""
    try:
        yield
    except NetlinkError as exc:
        raise CniError(ErrorCode.DATAPATH_FAILURE, f"failed to {what}: {exc.args[-1] if exc.args else exc} (errno {exc.code})") from None
    except OSError as exc:
        raise CniError(ErrorCode.DATAPATH_FAILURE, f"failed to {what}: {exc.strerror or exc}") from None


def enable_ip_forward() -> None:
    """Pods route through the node; a new namespace copies the host's setting."""
    with step("enable net.ipv4.ip_forward in the node namespace"), open(_IP_FORWARD, "r+") as f:
        if f.read().strip() != "1":
            f.seek(0)
            f.write("1")


def _link(msg: Any) -> Link:
    return Link(
        name=msg.get("ifname"),
        index=msg["index"],
        mac=msg.get("address") or "",
        master=msg.get("master"),
        mtu=msg.get("mtu"),
    )


def find_link(ipr: IPRoute, name: str) -> Link | None:
    try:
        links = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return _link(links[0]) if links else None


class BridgeDatapath:
    """Netlink steps in the node's namespace (one handle, used by one thread)."""

    def __init__(self, ipr: IPRoute) -> None:
        self.ipr = ipr
        # Bridges this handle configured: (name, mtu, gateway) -> the link as found.
        # A bridge that still exists with the same index needs no more calls.
        self._ready: dict[tuple[str, int | None, str], Link] = {}

    def ensure_bridge(self, name: str, mtu: int | None, gateway: ipaddress.IPv4Interface | None) -> Link:
        with step(f"look up bridge {name}"):
            link = find_link(self.ipr, name)
        ready_key = (name, mtu, str(gateway))
        known = self._ready.get(ready_key)
        if link is not None and known is not None and known.index == link.index:
            return link
        if link is None:
            with step(f"create bridge {name}"):
                try:
                    self.ipr.link("add", ifname=name, kind="bridge")
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
            with step(f"look up bridge {name}"):
                link = find_link(self.ipr, name)
            assert link is not None
        if mtu is not None and link.mtu != mtu:
            with step(f"set mtu {mtu} on bridge {name}"):
                self.ipr.link("set", index=link.index, mtu=mtu)
        if gateway is not None:
            with step(f"add gateway address {gateway} to bridge {name}"):
                present = {
                    (a.get("address"), a["prefixlen"]) for a in self.ipr.get_addr(index=link.index, family=2)
                }
                if (str(gateway.ip), gateway.network.prefixlen) not in present:
                    self.ipr.addr("add", index=link.index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
        with step(f"bring bridge {name} up"):
            self.ipr.link("set", index=link.index, state="up")
        self._ready[ready_key] = link
        return link

    def create_veth(self, host: str, pod_ifname: str, netns_fd: int, netns_path: str, mtu: int | None) -> None:
        extra: dict[str, Any] = {"mtu": mtu} if mtu is not None else {}
        peer: dict[str, Any] = {"ifname": pod_ifname, "net_ns_fd": netns_fd, **extra}
        try:
            self.ipr.link("add", ifname=host, kind="veth", peer=peer, **extra)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise CniError(
                    ErrorCode.INTERFACE_EXISTS,
                    f"failed to create veth {host} <-> {pod_ifname}: {host} exists in the node namespace or {pod_ifname} in {netns_path}",
                ) from None
            raise CniError(ErrorCode.DATAPATH_FAILURE, f"failed to create veth {host} <-> {pod_ifname} in {netns_path}: {exc}") from None

    def attach_to_bridge(self, host: str, bridge: Link, hairpin: bool) -> Link:
        with step(f"look up veth {host}"):
            link = find_link(self.ipr, host)
        if link is None:
            raise CniError(ErrorCode.DATAPATH_FAILURE, f"veth {host} vanished after it was created")
        with step(f"attach veth {host} to bridge {bridge.name} and bring it up"):
            self.ipr.link("set", index=link.index, master=bridge.index, state="up")
        if hairpin:
            with step(f"enable hairpin mode on bridge port {host}"):
                self.ipr.brport("set", index=link.index, mode=_BRPORT_MODE_HAIRPIN)
        return link

    def delete_link(self, name: str) -> bool:
        """Deletes a link if it exists (a veth takes its peer with it)."""
        with step(f"delete link {name}"):
            try:
                self.ipr.link("del", ifname=name)
            except NetlinkError as exc:
                if exc.code in (errno.ENODEV, errno.ENOENT):
                    return False
                raise
        return True

    def links_with_prefix(self, prefix: str) -> list[str]:
        with step(f"list links named {prefix}*"):
            return [name for msg in self.ipr.get_links() if (name := msg.get("ifname", "")).startswith(prefix)]


def configure_pod_interface(
    pod: IPRoute,
    ifname: str,
    netns_path: str,
    address: ipaddress.IPv4Interface,
    routes: tuple[Route, ...],
    default_gw: ipaddress.IPv4Address | None,
) -> Link:
    """Address, up, routes on the pod's end; `pod` is bound to its namespace.
    A route without a gateway goes through `default_gw` (when there is one)."""
    where = f"{ifname} in {netns_path}"
    with step(f"look up {where}"):
        link = find_link(pod, ifname)
    if link is None:
        raise CniError(ErrorCode.DATAPATH_FAILURE, f"interface {where} vanished after it was created")
    with step(f"add address {address} to {where}"):
        pod.addr("add", index=link.index, address=str(address.ip), prefixlen=address.network.prefixlen)
    with step(f"bring {where} up"):
        pod.link("set", index=link.index, state="up")
    for route in routes:
        gw = route.gw or default_gw
        with step(f"add route {route.dst} via {gw} on {where}"):
            kwargs: dict[str, Any] = {"dst": str(route.dst), "oif": link.index}
            if gw is not None:
                kwargs["gateway"] = str(gw)
            pod.route("add", **kwargs)
    return link


def pod_addresses(pod: IPRoute, index: int) -> set[ipaddress.IPv4Interface]:
    return {
        ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}") for a in pod.get_addr(index=index, family=2)
    }
