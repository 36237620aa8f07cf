"""Filter chain selection: which of a listener's filter chains serves a connection, by
Envoy's FilterChainMatch rules.

Rules (envoy.config.listener.v3.FilterChainMatch): the criteria are tried in Envoy's
order — destination_port, destination IP (prefix_ranges), server_names, transport_protocol,
application_protocols, source IP (source_prefix_ranges), source_ports. At each one, the
chains still in the running are narrowed to those that match it most specifically: a
chain naming the value beats a chain leaving the criterion empty; among prefix ranges the
longest prefix wins; among server names an exact name beats the longest wildcard suffix
(`*.example.com`). If no chain survives, none matches and the listener's
`default_filter_chain` (if any) serves the connection, else it is closed.

Selection is pure: the connection's facts come in as a `ConnectionFacts`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envoy.config.listener.v3.listener_components_pb2 import FilterChainMatch

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    destination_ip: str
    destination_port: int
    source_ip: str = ""
    source_port: int = 0
    transport_protocol: str = ""        # "tls" | "raw_buffer" (tls_inspector); "" if not inspected
    server_name: str = ""
    application_protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChainMatch:
    destination_port: int | None = None
    prefix_ranges: tuple[Network, ...] = ()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()
    source_prefix_ranges: tuple[Network, ...] = ()
    source_ports: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, message: FilterChainMatch, path: str) -> ChainMatch:
        reject_unsupported(message, path, ("destination_port", "prefix_ranges", "server_names",
                                           "transport_protocol", "application_protocols",
                                           "source_prefix_ranges", "source_ports"))
        return cls(
            destination_port=message.destination_port.value if message.HasField("destination_port") else None,
            prefix_ranges=_ranges(message.prefix_ranges, join(path, "prefix_ranges")),
            server_names=tuple(name.lower() for name in message.server_names),
            transport_protocol=message.transport_protocol,
            application_protocols=tuple(message.application_protocols),
            source_prefix_ranges=_ranges(message.source_prefix_ranges, join(path, "source_prefix_ranges")),
            source_ports=tuple(message.source_ports),
        )


def _ranges(ranges: Sequence[object], path: str) -> tuple[Network, ...]:
    networks = []
    for index, cidr in enumerate(ranges):
        here = f"{path}[{index}]"
        reject_unsupported(cidr, here, ("address_prefix", "prefix_len"))
        prefix = cidr.prefix_len.value if cidr.HasField("prefix_len") else None  # type: ignore[attr-defined]
        try:
            address = ipaddress.ip_address(cidr.address_prefix)  # type: ignore[attr-defined]
            length = prefix if prefix is not None else address.max_prefixlen
            networks.append(ipaddress.ip_network(f"{address}/{length}", strict=False))
        except ValueError as error:
            raise ConfigError(here, str(error)) from None
    return tuple(networks)


Score = Callable[[ChainMatch, ConnectionFacts], int | None]


def _port(match: ChainMatch, facts: ConnectionFacts) -> int | None:
    if match.destination_port is None:
        return 0
    return 1 if match.destination_port == facts.destination_port else None


def _longest_prefix(networks: tuple[Network, ...], ip: str) -> int | None:
    if not networks:
        return 0
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    lengths = [network.prefixlen + 1 for network in networks
               if network.version == address.version and address in network]
    return max(lengths) if lengths else None


def _destination_ip(match: ChainMatch, facts: ConnectionFacts) -> int | None:
    return _longest_prefix(match.prefix_ranges, facts.destination_ip)


def _server_name(match: ChainMatch, facts: ConnectionFacts) -> int | None:
    if not match.server_names:
        return 0
    name = facts.server_name
    best: int | None = None
    for wanted in match.server_names:
        if wanted == name:
            return 1 << 16
        if wanted.startswith("*.") and name.endswith(wanted[1:]):
            best = max(best or 0, len(wanted))
    return best


def _transport(match: ChainMatch, facts: ConnectionFacts) -> int | None:
    if not match.transport_protocol:
        return 0
    return 1 if match.transport_protocol == facts.transport_protocol else None


def _alpn(match: ChainMatch, facts: ConnectionFacts) -> int | None:
    if not match.application_protocols:
        return 0
    return 1 if any(p in match.application_protocols for p in facts.application_protocols) else None


def _source_ip(match: ChainMatch, facts: ConnectionFacts) -> int | None:
    return _longest_prefix(match.source_prefix_ranges, facts.source_ip)


def _source_port(match: ChainMatch, facts: ConnectionFacts) -> int | None:
    if not match.source_ports:
        return 0
    return 1 if facts.source_port in match.source_ports else None


_CRITERIA: tuple[Score, ...] = (_port, _destination_ip, _server_name, _transport, _alpn, _source_ip, _source_port)


def select(matches: Sequence[ChainMatch], facts: ConnectionFacts) -> int | None:
    """The index of the chain serving `facts`, or None."""
    candidates = list(range(len(matches)))
    for score in _CRITERIA:
        scored = [(score(matches[index], facts), index) for index in candidates]
        best = max((value for value, _ in scored if value is not None), default=None)
        if best is None:
            return None
        candidates = [index for value, index in scored if value == best]
    return candidates[0] if candidates else None
