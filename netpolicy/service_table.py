"""The node's service table: ClusterIP traffic from non-meshed pods, DNATed to the
Service's endpoints in the kernel (kube-proxy's nftables mode, in our own table).

Theory of operation (one table `inet tulle_services` per node, replaced atomically):
- Map `services`: `ClusterIP . protocol . port` → `goto` the service port's chain.
  The lookup is one hash probe whatever the number of services; the nat hooks
  prerouting (pods, via the node's bridge gateway) and output (the node itself) use it.
- A service port's chain picks an endpoint with `numgen random mod N` into a verdict
  map of endpoint chains; each endpoint chain DNATs to `podIP:targetPort`. New
  connections are balanced; conntrack keeps established ones on their endpoint.
- Hairpin: a pod that reaches itself through its Service is masqueraded (marked in its
  endpoint chain, masqueraded in postrouting), or its reply would bypass the DNAT. The
  mark is a bit of the connection's conntrack mark, not the packet mark: NetworkPolicy's
  forward chain (between the two nat hooks) uses the packet mark as scratch space.
- A service port without endpoints is in map `no_endpoints`, checked by filter chains
  on prerouting and output just before the nat ones (a ClusterIP has no route, so the
  forward hook would never see it): the client gets a TCP reset / ICMP port
  unreachable at once, as with kube-proxy, instead of a timeout.
- Hairpin traffic needs the pods' bridge ports in hairpin mode (tulle-cni's
  `hairpinMode`), as with every bridge CNI.
- Changes after the first table are diffs (`service_table_diff`): only the changed
  service ports' map elements and chains are replaced, in one transaction.
- DNAT happens before the forward hook, so NetworkPolicy (in its own table) sees the
  real destination pod, as Kubernetes requires.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TABLE = "tulle_services"
HAIRPIN_MARK = 0x4000
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class ServicePort:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    protocol: str  # TCP | UDP | SCTP
    endpoints: tuple[Endpoint, ...]

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.cluster_ip)
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"service {self.namespace}/{self.name}: unsupported protocol {self.protocol!r}")

    @property
    def chain(self) -> str:
        digest = hashlib.sha256(f"{self.namespace}/{self.name}/{self.protocol}/{self.port}".encode())
        return f"svc-{digest.hexdigest()[:12]}"

    @property
    def key(self) -> dict[str, Any]:
        return {"concat": [self.cluster_ip, _PROTOCOLS[self.protocol], self.port]}


def service_table(services: Iterable[ServicePort]) -> dict[str, Any]:
    """The whole table as one transaction, replacing the previous one atomically."""
    services = sorted(services, key=lambda s: s.chain)
    table = {"family": "inet", "name": TABLE}
    commands: list[dict[str, Any]] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        *(_map(name) for name in ("services", "no_endpoints")),
        _base_chain("prerouting", "nat", "prerouting", -100),
        _base_chain("output", "nat", "output", -100),
        _base_chain("postrouting", "nat", "postrouting", 100),
        _base_chain("filter_prerouting", "filter", "prerouting", -110),
        _base_chain("filter_output", "filter", "output", -110),
    ]
    lookup = {"vmap": {"key": _packet_key(), "data": "@services"}}
    commands += [_rule("prerouting", lookup), _rule("output", lookup)]
    hairpin = {"&": [{"ct": {"key": "mark"}}, HAIRPIN_MARK]}
    commands.append(_rule("postrouting", _eq(hairpin, HAIRPIN_MARK), {"masquerade": None}))
    for chain in ("filter_prerouting", "filter_output"):
        commands.append(_rule(
            chain,
            _eq({"ct": {"key": "state"}}, "new"),
            {"vmap": {"key": _packet_key(), "data": "@no_endpoints"}},
        ))
    services_elements, no_endpoint_elements = [], []
    for service in services:
        if not service.endpoints:
            no_endpoint_elements.append([service.key, {"goto": {"target": "reject_no_endpoints"}}])
            continue
        services_elements.append([service.key, {"goto": {"target": service.chain}}])
        commands += _service_chains(service)
    commands.append(_chain("reject_no_endpoints"))
    commands.append(_rule("reject_no_endpoints", _eq({"meta": {"key": "l4proto"}}, "tcp"), {"reject": {"type": "tcp reset"}}))
    commands.append(_rule("reject_no_endpoints", {"reject": {"type": "icmpx", "expr": "port-unreachable"}}))
    for name, elements in (("services", services_elements), ("no_endpoints", no_endpoint_elements)):
        if elements:
            commands.append({"add": {"element": {"family": "inet", "table": TABLE, "name": name, "elem": elements}}})
    return {"nftables": commands}


def service_table_diff(old: Iterable[ServicePort], new: Iterable[ServicePort]) -> dict[str, Any]:
    """The changes that turn the table `service_table(old)` built into `service_table(new)`,
    as one transaction: only the service ports that differ (endpoints, ClusterIP, added,
    removed) have their map element and chains replaced. Empty when nothing differs."""
    before = {s.chain: s for s in old}
    after = {s.chain: s for s in new}
    gone = sorted((s for chain, s in before.items() if after.get(chain) != s), key=lambda s: s.chain)
    came = sorted((s for chain, s in after.items() if before.get(chain) != s), key=lambda s: s.chain)
    commands: list[dict[str, Any]] = []
    for service in gone:  # unhook first: a chain a map element points to cannot be deleted
        commands.append({"delete": {"element": {"family": "inet", "table": TABLE, "elem": [service.key],
                                                "name": "services" if service.endpoints else "no_endpoints"}}})
    for service in gone:
        if service.endpoints:
            ref = {"family": "inet", "table": TABLE, "name": service.chain}
            commands.append({"flush": {"chain": ref}})  # its rule is what refers to the endpoint chains
            commands += [{"delete": {"chain": {**ref, "name": f"{service.chain}-ep{i}"}}}
                         for i in range(len(service.endpoints))]
            commands.append({"delete": {"chain": ref}})
    for service in came:
        if service.endpoints:
            commands += _service_chains(service)
            target = {"goto": {"target": service.chain}}
        else:
            target = {"goto": {"target": "reject_no_endpoints"}}
        commands.append({"add": {"element": {"family": "inet", "table": TABLE, "elem": [[service.key, target]],
                                             "name": "services" if service.endpoints else "no_endpoints"}}})
    return {"nftables": commands}


def _service_chains(service: ServicePort) -> list[dict[str, Any]]:
    commands = [_chain(service.chain)]
    endpoint_chains = []
    for index, endpoint in enumerate(service.endpoints):
        name = f"{service.chain}-ep{index}"
        endpoint_chains.append(name)
        commands.append(_chain(name))
        commands.append(_rule(name, _eq({"payload": {"protocol": "ip", "field": "saddr"}}, endpoint.ip),
                              {"mangle": {"key": {"ct": {"key": "mark"}},
                                          "value": {"|": [{"ct": {"key": "mark"}}, HAIRPIN_MARK]}}}))
        commands.append(_rule(name, _eq({"meta": {"key": "l4proto"}}, _PROTOCOLS[service.protocol]),
                              {"dnat": {"family": "ip", "addr": endpoint.ip, "port": endpoint.port}}))
    choice = {"vmap": {
        "key": {"numgen": {"mode": "random", "mod": len(endpoint_chains), "offset": 0}},
        "data": {"set": [[i, {"goto": {"target": name}}] for i, name in enumerate(endpoint_chains)]},
    }}
    commands.append(_rule(service.chain, choice))
    return commands


def _packet_key() -> dict[str, Any]:
    return {"concat": [
        {"payload": {"protocol": "ip", "field": "daddr"}},
        {"meta": {"key": "l4proto"}},
        {"payload": {"protocol": "th", "field": "dport"}},
    ]}


def _map(name: str) -> dict[str, Any]:
    return {"add": {"map": {
        "family": "inet", "table": TABLE, "name": name,
        "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
    }}}


def _base_chain(name: str, kind: str, hook: str, prio: int) -> dict[str, Any]:
    return {"add": {"chain": {"family": "inet", "table": TABLE, "name": name,
                              "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}}


def _chain(name: str) -> dict[str, Any]:
    return {"add": {"chain": {"family": "inet", "table": TABLE, "name": name}}}


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": list(expr)}}}


def _eq(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}
