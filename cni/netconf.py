"""tulle-cni's network configuration: the one object a conflist entry describes,
validated at the edge.

Rules:
- Every field is typed and checked; an error names the field's path
  (`ipam.rangeStart`) and why it is wrong (code 7, invalid network config).
- A top-level field that neither the CNI spec nor tulle-cni defines is refused
  with code 2 (unsupported field), key and value in the message: a typo in a
  conflist must not silently change nothing.
- Fields the runtime injects (prevResult, runtimeConfig, args, capabilities,
  cni.dev/valid-attachments) are accepted and parsed where tulle-cni uses them.
- `ipam` is tulle-cni's own (the agent allocates); delegating to an IPAM plugin
  is refused. Without `ipam.subnet`, the agent's node pod CIDR is used.
- IPv4 only, for now.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from cni.errors import CniError, ErrorCode
from cni.result import Result, Route
from cni.wire import DEFAULT_AGENT_SOCKET, SUPPORTED_VERSIONS

DEFAULT_BRIDGE = "tulle0"


# The spec's rule for network names and container IDs.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")

_SPEC_FIELDS = frozenset(
    {
        "cniVersion", "cniVersions", "name", "type", "disableCheck", "disableGC",
        "ipam", "dns", "args", "runtimeConfig", "capabilities", "prevResult",
        "cni.dev/valid-attachments", "cni.dev/attachments",
    }
)
_TULLE_FIELDS = frozenset(
    {"bridge", "mtu", "hairpinMode", "isGateway", "isDefaultGateway", "agentSocket"}
)
_IPAM_FIELDS = frozenset({"type", "subnet", "rangeStart", "rangeEnd", "gateway", "routes"})


@dataclass(frozen=True)
class IpamConf:
    subnet: ipaddress.IPv4Network | None = None
    range_start: ipaddress.IPv4Address | None = None
    range_end: ipaddress.IPv4Address | None = None
    gateway: ipaddress.IPv4Address | None = None
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Attachment:
    """One (container, interface) pair, as GC's valid-attachments lists them."""

    container_id: str
    ifname: str


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    bridge: str = DEFAULT_BRIDGE
    mtu: int | None = None
    hairpin_mode: bool = False
    is_gateway: bool = True
    is_default_gateway: bool = True
    agent_socket: str = DEFAULT_AGENT_SOCKET
    ipam: IpamConf = IpamConf()
    dns: dict[str, Any] | None = None
    runtime_ips: tuple[ipaddress.IPv4Address, ...] = ()
    prev_result: Result | None = None
    valid_attachments: tuple[Attachment, ...] | None = None


def load_netconf(data: Any) -> NetConf:
    """Validates a decoded network configuration (the plugin's stdin)."""
    if not isinstance(data, dict):
        raise _invalid("(config)", "expected a JSON object")
    version = data.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise _invalid("cniVersion", "missing; expected one of " + ", ".join(SUPPORTED_VERSIONS))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"cniVersion: {version!r} is not supported; tulle-cni speaks " + ", ".join(SUPPORTED_VERSIONS),
        )
    for key, value in data.items():
        if key not in _SPEC_FIELDS and key not in _TULLE_FIELDS:
            raise CniError(ErrorCode.UNSUPPORTED_FIELD, f"unsupported field {key!r} (value {value!r})")
    name = _str(data, "name", required=True)
    if not NAME_RE.match(name):
        raise _invalid("name", f"{name!r} must start with a letter or digit and hold only letters, digits, '_', '.', '-'")
    bridge = _str(data, "bridge") or DEFAULT_BRIDGE
    if not _valid_ifname(bridge):
        raise _invalid("bridge", f"{bridge!r} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")
    mtu = data.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535):
        raise _invalid("mtu", f"{mtu!r} must be an integer between 68 and 65535")
    is_default_gateway = _bool(data, "isDefaultGateway", True)
    is_gateway = _bool(data, "isGateway", True)
    if is_default_gateway and not is_gateway:
        raise _invalid("isDefaultGateway", "needs isGateway (the bridge must hold the gateway address)")
    dns = data.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise _invalid("dns", "expected an object")
    prev = data.get("prevResult")
    return NetConf(
        cni_version=version,
        name=name,
        type=_str(data, "type", required=True),
        bridge=bridge,
        mtu=mtu,
        hairpin_mode=_bool(data, "hairpinMode", False),
        is_gateway=is_gateway,
        is_default_gateway=is_default_gateway,
        agent_socket=_str(data, "agentSocket") or DEFAULT_AGENT_SOCKET,
        ipam=_load_ipam(data.get("ipam")),
        dns=dns,
        runtime_ips=_runtime_ips(data),
        prev_result=Result.from_json(prev) if prev is not None else None,
        valid_attachments=_attachments(data),
    )


def _load_ipam(ipam: Any) -> IpamConf:
    if ipam is None:
        return IpamConf()
    if not isinstance(ipam, dict):
        raise _invalid("ipam", "expected an object")
    for key, value in ipam.items():
        if key not in _IPAM_FIELDS:
            raise CniError(ErrorCode.UNSUPPORTED_FIELD, f"unsupported field 'ipam.{key}' (value {value!r})")
    kind = ipam.get("type", "tulle")
    if kind != "tulle":
        raise _invalid("ipam.type", f"{kind!r}: tulle-cni allocates addresses itself; omit the field or set it to 'tulle'")
    subnet = None
    if "subnet" in ipam:
        try:
            net = ipaddress.ip_network(ipam["subnet"], strict=True)
        except (TypeError, ValueError) as exc:
            raise _invalid("ipam.subnet", f"{ipam['subnet']!r} is not a network in CIDR form ({exc})") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise _invalid("ipam.subnet", "only IPv4 subnets are supported")
        if net.prefixlen > 30:
            raise _invalid("ipam.subnet", f"{net} is too small (at most /30)")
        subnet = net
    routes = []
    raw_routes = ipam.get("routes", [])
    if not isinstance(raw_routes, list):
        raise _invalid("ipam.routes", "expected a list")
    for i, route in enumerate(raw_routes):
        try:
            if set(route) - {"dst", "gw"}:
                raise ValueError(f"unknown keys {sorted(set(route) - {'dst', 'gw'})}")
            routes.append(
                Route(
                    dst=ipaddress.IPv4Network(route["dst"]),
                    gw=ipaddress.IPv4Address(route["gw"]) if route.get("gw") else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"ipam.routes[{i}]", f"expected {{'dst': IPv4 CIDR, 'gw': optional IPv4}} ({exc})") from None
    return IpamConf(
        subnet=subnet,
        range_start=_address(ipam, "rangeStart"),
        range_end=_address(ipam, "rangeEnd"),
        gateway=_address(ipam, "gateway"),
        routes=tuple(routes),
    )


def _runtime_ips(data: dict[str, Any]) -> tuple[ipaddress.IPv4Address, ...]:
    """Requested addresses: runtimeConfig.ips (capability "ips") or args.cni.ips."""
    sources: list[tuple[str, Any]] = []
    runtime = data.get("runtimeConfig")
    if runtime is not None and not isinstance(runtime, dict):
        raise _invalid("runtimeConfig", "expected an object")
    if runtime and "ips" in runtime:
        sources.append(("runtimeConfig.ips", runtime["ips"]))
    args = data.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict) and "ips" in args["cni"]:
        sources.append(("args.cni.ips", args["cni"]["ips"]))
    out: list[ipaddress.IPv4Address] = []
    for path, value in sources:
        if not isinstance(value, list):
            raise _invalid(path, "expected a list of addresses")
        for i, raw in enumerate(value):
            out.append(parse_requested_ip(raw, f"{path}[{i}]"))
    return tuple(dict.fromkeys(out))


def parse_requested_ip(raw: Any, path: str) -> ipaddress.IPv4Address:
    """An address, optionally with a prefix length (runtimes send both forms)."""
    try:
        return ipaddress.IPv4Interface(raw).ip
    except (TypeError, ValueError):
        raise _invalid(path, f"{raw!r} is not an IPv4 address") from None


def _attachments(data: dict[str, Any]) -> tuple[Attachment, ...] | None:
    # libcni sends both keys (cni.dev/attachments was the name in an early 1.1 draft).
    key = "cni.dev/valid-attachments" if "cni.dev/valid-attachments" in data else "cni.dev/attachments"
    if key not in data:
        return None
    raw = data[key]
    if not isinstance(raw, list):
        raise _invalid(key, "expected a list of {containerID, ifname}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) or not isinstance(item.get("ifname"), str):
            raise _invalid(f"{key}[{i}]", "expected {'containerID': string, 'ifname': string}")
        out.append(Attachment(item["containerID"], item["ifname"]))
    return tuple(out)


def _valid_ifname(name: str) -> bool:
    return 0 < len(name) < 16 and name not in (".", "..") and not any(c in name for c in "/: \t\n\r\v\f")


def _str(data: dict[str, Any], key: str, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise _invalid(key, "missing; expected a string")
        return ""
    if not isinstance(value, str) or (required and not value):
        raise _invalid(key, f"{value!r}: expected a non-empty string")
    return value


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(key, f"{value!r}: expected true or false")
    return value


def _address(data: dict[str, Any], key: str) -> ipaddress.IPv4Address | None:
    if key not in data:
        return None
    try:
        return ipaddress.IPv4Address(data[key])
    except (TypeError, ValueError):
        raise _invalid(f"ipam.{key}", f"{data[key]!r} is not an IPv4 address") from None


def _invalid(path: str, why: str) -> CniError:
    return CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"{path}: {why}")


def valid_ifname(name: str) -> bool:
    """The spec's rule for CNI_IFNAME (and Linux's for any interface name)."""
    return _valid_ifname(name)
