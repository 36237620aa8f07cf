"""Transparent capture for meshed pods: the nftables rules tulle-cni installs in a
pod's network namespace (what istio-cni installs with iptables), as libnftables JSON.

Rules, in the order the chains apply them:
- Outbound (nat, hook output): traffic the pod's own processes originate.
  * the sidecar's own traffic is never captured: packets of uid `proxy_uid` (1337,
    Istio's) or carrying `proxy_mark` return — otherwise its upstream connections
    would loop back into itself;
  * loopback destinations return (the inbound sidecar reaches the app on localhost);
  * excluded ports and address ranges return (annotations, below);
  * every other TCP connection is redirected to the sidecar's outbound port, 15001.
    The sidecar recovers the original destination with SO_ORIGINAL_DST.
- Inbound (nat, hook prerouting): traffic arriving from the network.
  * loopback and the sidecar's own ports (admin, capture, health) return;
  * excluded inbound ports return; with `includeInboundPorts`, only those are taken;
  * every other TCP connection is redirected to the inbound port, 15006.
- Only TCP is captured; UDP and ICMP pass untouched, as in Istio.

Pod annotations (Istio's `traffic.sidecar.istio.io/*` names, in our domain):
`traffic.tulle.io/excludeOutboundPorts`, `excludeInboundPorts`, `includeInboundPorts`
(`*` = all, the default) and `excludeOutboundIPRanges`: comma-separated lists. A
malformed value is an error naming the annotation, so that ADD fails before any rule
is installed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TABLE = "tulle_capture"
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
PROXY_UID = 1337
PROXY_MARK = 0x539
# The sidecar's own listeners, reachable from outside without capture.
PROXY_PORTS = (15000, 15001, 15006, 15020, 15021, 15090)
ANNOTATION_PREFIX = "traffic.tulle.io/"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CaptureConfigError(ValueError):
    """An annotation that does not describe a valid capture; names the annotation."""


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    proxy_uid: int = PROXY_UID
    proxy_mark: int = PROXY_MARK
    exclude_outbound_ports: frozenset[int] = frozenset()
    exclude_inbound_ports: frozenset[int] = frozenset()
    include_inbound_ports: frozenset[int] | None = None  # None: every port
    exclude_outbound_ranges: tuple[Network, ...] = ()

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> CaptureConfig:
        def ports(name: str) -> frozenset[int]:
            return _ports(annotations.get(ANNOTATION_PREFIX + name, ""), ANNOTATION_PREFIX + name)

        include = annotations.get(ANNOTATION_PREFIX + "includeInboundPorts", "*").strip()
        ranges = annotations.get(ANNOTATION_PREFIX + "excludeOutboundIPRanges", "")
        return cls(
            exclude_outbound_ports=ports("excludeOutboundPorts"),
            exclude_inbound_ports=ports("excludeInboundPorts"),
            include_inbound_ports=None if include == "*" else ports("includeInboundPorts"),
            exclude_outbound_ranges=_networks(ranges, ANNOTATION_PREFIX + "excludeOutboundIPRanges"),
        )


def _ports(value: str, annotation: str) -> frozenset[int]:
    result = set()
    for item in filter(None, (part.strip() for part in value.split(","))):
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise CaptureConfigError(f"annotation {annotation}: {item!r} is not a port (1-65535)")
        result.add(int(item))
    return frozenset(result)


def _networks(value: str, annotation: str) -> tuple[Network, ...]:
    result = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            result.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise CaptureConfigError(f"annotation {annotation}: {item!r} is not a CIDR") from None
    return tuple(result)


def capture_ruleset(config: CaptureConfig) -> dict[str, Any]:
    """The whole capture table as one transaction: (re)created atomically."""
    outbound = [
        _rule("outbound", _eq({"meta": {"key": "skuid"}}, config.proxy_uid), {"return": None}),
        _rule("outbound", _eq({"meta": {"key": "mark"}}, config.proxy_mark), {"return": None}),
        _rule("outbound", _eq({"payload": {"protocol": "ip", "field": "daddr"}}, _prefix("127.0.0.0/8")), {"return": None}),
        _rule("outbound", _eq({"payload": {"protocol": "ip6", "field": "daddr"}}, "::1"), {"return": None}),
    ]
    if config.exclude_outbound_ports:
        outbound.append(_rule("outbound", _eq(_tcp_dport(), _set(config.exclude_outbound_ports)), {"return": None}))
    for family in ("ip", "ip6"):
        ranges = [n for n in config.exclude_outbound_ranges if (n.version == 4) == (family == "ip")]
        if ranges:
            daddr = {"payload": {"protocol": family, "field": "daddr"}}
            outbound.append(_rule("outbound", _eq(daddr, {"set": [_prefix(str(n)) for n in ranges]}), {"return": None}))
    outbound.append(_rule("outbound", _eq({"meta": {"key": "l4proto"}}, "tcp"), {"redirect": {"port": config.outbound_port}}))

    inbound = [
        _rule("inbound", _eq({"meta": {"key": "iifname"}}, "lo"), {"return": None}),
        _rule("inbound", _eq(_tcp_dport(), _set(set(PROXY_PORTS) | config.exclude_inbound_ports)), {"return": None}),
    ]
    if config.include_inbound_ports is not None:
        inbound.append(_rule("inbound", {"match": {"op": "!=", "left": _tcp_dport(), "right": _set(config.include_inbound_ports or {0})}}, {"return": None}))
    inbound.append(_rule("inbound", _eq({"meta": {"key": "l4proto"}}, "tcp"), {"redirect": {"port": config.inbound_port}}))

    table = {"family": "inet", "name": TABLE}
    commands: list[dict[str, Any]] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},  # add-then-delete: replaces any old table in this transaction
        {"add": {"table": table}},
        {"add": {"chain": {**_chain("outbound"), "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}},
        {"add": {"chain": {**_chain("inbound"), "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
        *({"add": {"rule": rule}} for rule in outbound + inbound),
    ]
    return {"nftables": commands}


def _chain(name: str) -> dict[str, Any]:
    return {"family": "inet", "table": TABLE, "name": name}


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"family": "inet", "table": TABLE, "chain": chain, "expr": list(expr)}


def _eq(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _tcp_dport() -> dict[str, Any]:
    return {"payload": {"protocol": "tcp", "field": "dport"}}


def _set(values: frozenset[int] | set[int]) -> dict[str, Any]:
    return {"set": sorted(values)}


def _prefix(cidr: str) -> dict[str, Any]:
    network = ipaddress.ip_network(cidr, strict=False)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}
