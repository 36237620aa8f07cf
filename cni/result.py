"""The CNI Result: what ADD returns, and what later plugins and DEL/CHECK receive
back as `prevResult`.

Rules:
- One in-memory shape; `to_json(version)` renders the wire form of a given spec
  version. 0.3.x/0.4.0 tag every IP with `"version": "4"`; 1.0.0 dropped that field.
- `interface` in an IP entry is an index into `interfaces` (the container's
  interface, so that chained plugins such as portmap find the sandbox).
- `from_json` accepts both shapes and names the field that is wrong.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cni.errors import CniError, ErrorCode


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None
    interface: int | None


@dataclass(frozen=True)
class Route:
    dst: ipaddress.IPv4Network
    gw: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)

    def to_json(self, version: str) -> dict[str, Any]:
        legacy = version.startswith("0.")
        interfaces = []
        for itf in self.interfaces:
            entry: dict[str, Any] = {"name": itf.name}
            if itf.mac:
                entry["mac"] = itf.mac
            if itf.sandbox:
                entry["sandbox"] = itf.sandbox
            interfaces.append(entry)
        ips = []
        for ip in self.ips:
            ip_entry: dict[str, Any] = {}
            if legacy:
                ip_entry["version"] = "4"
            if ip.interface is not None:
                ip_entry["interface"] = ip.interface
            ip_entry["address"] = str(ip.address)
            if ip.gateway is not None:
                ip_entry["gateway"] = str(ip.gateway)
            ips.append(ip_entry)
        routes = []
        for route in self.routes:
            route_entry: dict[str, Any] = {"dst": str(route.dst)}
            if route.gw is not None:
                route_entry["gw"] = str(route.gw)
            routes.append(route_entry)
        return {
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": dict(self.dns),
        }

    @classmethod
    def from_json(cls, data: Any, path: str = "prevResult") -> Result:
        if not isinstance(data, dict):
            raise _invalid(path, "expected an object")
        interfaces = []
        for i, itf in enumerate(_list(data, "interfaces", path)):
            where = f"{path}.interfaces[{i}]"
            if not isinstance(itf, dict) or not isinstance(itf.get("name"), str):
                raise _invalid(where, "expected an object with a string 'name'")
            interfaces.append(
                Interface(name=itf["name"], mac=str(itf.get("mac", "")), sandbox=str(itf.get("sandbox", "")))
            )
        ips = []
        for i, ip in enumerate(_list(data, "ips", path)):
            where = f"{path}.ips[{i}]"
            if not isinstance(ip, dict):
                raise _invalid(where, "expected an object")
            try:
                address = ipaddress.IPv4Interface(ip["address"])
                gateway = ipaddress.IPv4Address(ip["gateway"]) if ip.get("gateway") else None
            except (KeyError, ValueError) as exc:
                raise _invalid(where, f"expected an IPv4 'address' in CIDR form and an optional 'gateway' ({exc})") from None
            index = ip.get("interface")
            if index is not None and (not isinstance(index, int) or not 0 <= index < len(interfaces)):
                raise _invalid(f"{where}.interface", f"{index!r} is not an index into interfaces")
            ips.append(IPConfig(address=address, gateway=gateway, interface=index))
        routes = []
        for i, route in enumerate(_list(data, "routes", path)):
            where = f"{path}.routes[{i}]"
            try:
                dst = ipaddress.IPv4Network(route["dst"])
                gw = ipaddress.IPv4Address(route["gw"]) if route.get("gw") else None
            except (KeyError, ValueError, TypeError) as exc:
                raise _invalid(where, f"expected an IPv4 'dst' network and an optional 'gw' ({exc})") from None
            routes.append(Route(dst=dst, gw=gw))
        dns = data.get("dns") or {}
        if not isinstance(dns, dict):
            raise _invalid(f"{path}.dns", "expected an object")
        return cls(interfaces=tuple(interfaces), ips=tuple(ips), routes=tuple(routes), dns=dns)


def _list(data: dict[str, Any], key: str, path: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise _invalid(f"{path}.{key}", "expected a list")
    return value


def _invalid(path: str, why: str) -> CniError:
    return CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"{path}: {why}")
