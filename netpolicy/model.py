"""The policy objects Tulle enforces, parsed from Kubernetes-shaped documents.

Kinds (exactly the upstream APIs' fields; anything else is rejected):
- `networking.k8s.io/v1` NetworkPolicy: namespaced; `podSelector` picks the pods it
  isolates; `policyTypes` defaults to [Ingress] plus Egress when `egress` holds at least
  one rule; each rule is (peers, ports). No peers = every peer, no ports = every port.
  A peer is `podSelector` (pods of the policy's namespace), `namespaceSelector` (every pod
  of the selected namespaces), both (AND), or `ipBlock` (cidr minus `except`). A port is
  a number (with optional `endPort`), a container-port name (resolved on the destination
  pod, by name and protocol), or absent (every port of the protocol); protocol defaults to
  TCP.
- `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy: cluster-scoped, `priority`
  0..1000 (lower first), a `subject` (namespaces, or pods = namespaces AND pods), rules
  with an `action` Allow/Deny/Pass, peers (namespaces, pods; egress also `networks`) and
  ports (portNumber, namedPort, portRange).
- BaselineAdminNetworkPolicy: the same without priority and Pass; a singleton named
  `default`.

Validation follows the API server's: bad CIDRs, `except` outside its `cidr`, ports outside
1..65535, `endPort` below `port` or with a named port, unknown fields — each a
`PolicyError` naming the field's path. Parsed objects are immutable and hashable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias

from netpolicy.labels import LabelSelector, SelectorError

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_PORT_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class PolicyError(ValueError):
    """A policy document the API would reject; `path` names the offending field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Protocol(Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def number(self) -> int:
        """The IP protocol number, which is what the kernel matches."""
        return _PROTOCOL_NUMBERS[self]


_PROTOCOL_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


class Direction(Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


class Action(Enum):
    ALLOW = "Allow"
    DENY = "Deny"
    PASS = "Pass"


# --------------------------------------------------------------------------- ports
@dataclass(frozen=True, slots=True)
class PortRange:
    """`protocol` traffic to ports `first..last`; `first=1, last=65535` is every port."""

    protocol: Protocol
    first: int
    last: int

    def matches(self, protocol: Protocol, port: int) -> bool:
        return protocol is self.protocol and self.first <= port <= self.last


@dataclass(frozen=True, slots=True)
class NamedPort:
    """A container port name, resolved on the destination pod. `protocol` None (ANP's
    namedPort) takes the container port's own protocol."""

    name: str
    protocol: Protocol | None


PortMatch: TypeAlias = PortRange | NamedPort


# --------------------------------------------------------------------------- peers
@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: IPNetwork
    exceptions: tuple[IPNetwork, ...] = ()

    def contains(self, address: IPAddress) -> bool:
        return address in self.cidr and not any(address in e for e in self.exceptions)


@dataclass(frozen=True, slots=True)
class PodPeer:
    """Pods whose namespace matches `namespaces` and whose labels match `pods`. None
    for `namespaces` means the policy's own namespace (`own_namespace`)."""

    namespaces: LabelSelector | None
    pods: LabelSelector
    own_namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Networks:
    """An AdminNetworkPolicy `networks` peer: any of the CIDRs (pod IPs included)."""

    cidrs: tuple[IPNetwork, ...]

    def contains(self, address: IPAddress) -> bool:
        return any(address in c for c in self.cidrs)


Peer: TypeAlias = PodPeer | IPBlock | Networks


@dataclass(frozen=True, slots=True)
class Rule:
    """One ingress or egress rule. `peers` None = every peer; `ports` None = every port.
    `action` is ALLOW for NetworkPolicy rules. `name` is the rule's display name."""

    name: str
    action: Action
    peers: tuple[Peer, ...] | None
    ports: tuple[PortMatch, ...] | None


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[Direction]
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]

    kind = "NetworkPolicy"

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        return f"NetworkPolicy {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class AdminNetworkPolicy:
    """Also a BaselineAdminNetworkPolicy when `baseline` (then `priority` is unused)."""

    name: str
    priority: int
    subject: PodPeer
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    baseline: bool = False

    @property
    def kind(self) -> str:
        return "BaselineAdminNetworkPolicy" if self.baseline else "AdminNetworkPolicy"

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.kind, None, self.name)

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


Policy: TypeAlias = NetworkPolicy | AdminNetworkPolicy

NETWORKING_V1 = "networking.k8s.io/v1"
POLICY_V1ALPHA1 = "policy.networking.k8s.io/v1alpha1"
POLICY_KINDS = {
    "NetworkPolicy": NETWORKING_V1,
    "AdminNetworkPolicy": POLICY_V1ALPHA1,
    "BaselineAdminNetworkPolicy": POLICY_V1ALPHA1,
}


# --------------------------------------------------------------------------- parsing
def parse_policy(doc: object, path: str = "") -> Policy:
    """A NetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy document."""
    try:
        return _parse_policy(doc, path)
    except SelectorError as e:
        raise PolicyError(e.path, e.reason) from None


def _parse_policy(doc: object, path: str) -> Policy:
    obj = _object(doc, path or "<document>")
    _only(obj, {"apiVersion", "kind", "metadata", "spec", "status"}, path)
    kind = obj.get("kind")
    if kind not in POLICY_KINDS:
        raise PolicyError(_join(path, "kind"), f"unsupported kind {kind!r}: must be one of {', '.join(POLICY_KINDS)}")
    if obj.get("apiVersion") != POLICY_KINDS[kind]:
        raise PolicyError(_join(path, "apiVersion"), f"must be {POLICY_KINDS[kind]} for {kind}, not {obj.get('apiVersion')!r}")
    meta = _object(obj.get("metadata"), _join(path, "metadata"))
    _only(meta, {"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp"}, _join(path, "metadata"))
    name = _dns_name(meta.get("name"), _join(path, "metadata.name"))
    spec = _object(obj.get("spec"), _join(path, "spec"))
    spath = _join(path, "spec")
    if kind == "NetworkPolicy":
        namespace = _dns_name(meta.get("namespace"), _join(path, "metadata.namespace"))
        return _network_policy(namespace, name, spec, spath)
    if "namespace" in meta:
        raise PolicyError(_join(path, "metadata.namespace"), f"{kind} is cluster-scoped")
    return _admin_policy(name, spec, spath, baseline=kind == "BaselineAdminNetworkPolicy")


def _network_policy(namespace: str, name: str, spec: Mapping[str, Any], path: str) -> NetworkPolicy:
    _only(spec, {"podSelector", "policyTypes", "ingress", "egress"}, path)
    if "podSelector" not in spec:
        raise PolicyError(f"{path}.podSelector", "required (use {} to select every pod)")
    pod_selector = LabelSelector.from_dict(spec["podSelector"], f"{path}.podSelector")
    rules: dict[Direction, tuple[Rule, ...]] = {}
    for direction, key, peer_key in ((Direction.INGRESS, "ingress", "from"), (Direction.EGRESS, "egress", "to")):
        items = _list(spec.get(key), f"{path}.{key}")
        rules[direction] = tuple(
            _np_rule(namespace, item, f"{path}.{key}[{i}]", peer_key, f"{key}[{i}]")
            for i, item in enumerate(items)
        )
    if spec.get("policyTypes") is None:
        # The API's defaulting: Ingress always, Egress when there is an egress rule.
        types = {Direction.INGRESS} | ({Direction.EGRESS} if rules[Direction.EGRESS] else set())
    else:
        types = set()
        for i, t in enumerate(_list(spec["policyTypes"], f"{path}.policyTypes")):
            try:
                types.add(Direction(t))
            except ValueError:
                raise PolicyError(f"{path}.policyTypes[{i}]", f"unsupported value {t!r}: must be Ingress or Egress") from None
    return NetworkPolicy(namespace, name, pod_selector, frozenset(types), rules[Direction.INGRESS], rules[Direction.EGRESS])


def _np_rule(namespace: str, doc: object, path: str, peer_key: str, label: str) -> Rule:
    rule = _object(doc, path)
    _only(rule, {peer_key, "ports"}, path)
    peers = None
    if rule.get(peer_key):
        peers = tuple(_np_peer(namespace, p, f"{path}.{peer_key}[{i}]") for i, p in enumerate(_list(rule[peer_key], f"{path}.{peer_key}")))
    ports = None
    if rule.get("ports"):
        ports = tuple(_np_port(p, f"{path}.ports[{i}]") for i, p in enumerate(_list(rule["ports"], f"{path}.ports")))
    return Rule(label, Action.ALLOW, peers, ports)


def _np_peer(namespace: str, doc: object, path: str) -> Peer:
    peer = _object(doc, path)
    _only(peer, {"podSelector", "namespaceSelector", "ipBlock"}, path)
    if not peer:
        raise PolicyError(path, "must specify podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in peer:
        if len(peer) > 1:
            raise PolicyError(path, "ipBlock may not be combined with podSelector or namespaceSelector")
        return _ip_block(peer["ipBlock"], f"{path}.ipBlock")
    pods = LabelSelector.from_dict(peer.get("podSelector") or {}, f"{path}.podSelector")
    if "namespaceSelector" in peer:
        return PodPeer(LabelSelector.from_dict(peer["namespaceSelector"] or {}, f"{path}.namespaceSelector"), pods)
    return PodPeer(None, pods, own_namespace=namespace)


def _ip_block(doc: object, path: str) -> IPBlock:
    block = _object(doc, path)
    _only(block, {"cidr", "except"}, path)
    cidr = _cidr(block.get("cidr"), f"{path}.cidr")
    exceptions = []
    for i, text in enumerate(_list(block.get("except"), f"{path}.except")):
        e = _cidr(text, f"{path}.except[{i}]")
        if e.version != cidr.version or not e.subnet_of(cidr) or e == cidr:  # type: ignore[arg-type]
            raise PolicyError(f"{path}.except[{i}]", f"{text!r} must be a strict subset of cidr {cidr}")
        exceptions.append(e)
    return IPBlock(cidr, tuple(exceptions))


def _np_port(doc: object, path: str) -> PortMatch:
    item = _object(doc, path)
    _only(item, {"port", "endPort", "protocol"}, path)
    protocol = _protocol(item.get("protocol", "TCP"), f"{path}.protocol")
    port = item.get("port")
    end = item.get("endPort")
    if isinstance(port, str):
        if end is not None:
            raise PolicyError(f"{path}.endPort", "may not be used with a named port")
        return NamedPort(_port_name(port, f"{path}.port"), protocol)
    if port is None:
        if end is not None:
            raise PolicyError(f"{path}.endPort", "requires a numeric port")
        return PortRange(protocol, 1, 65535)
    first = _port_number(port, f"{path}.port")
    last = first if end is None else _port_number(end, f"{path}.endPort")
    if last < first:
        raise PolicyError(f"{path}.endPort", f"must be greater than or equal to port ({first}), not {last}")
    return PortRange(protocol, first, last)


def _admin_policy(name: str, spec: Mapping[str, Any], path: str, baseline: bool) -> AdminNetworkPolicy:
    _only(spec, {"subject", "ingress", "egress"} | (set() if baseline else {"priority"}), path)
    priority = 0
    if baseline:
        if name != "default":
            raise PolicyError(path.rsplit(".", 1)[0] + ".metadata.name" if "." in path else "metadata.name",
                              "a BaselineAdminNetworkPolicy must be named 'default'")
    else:
        priority = spec.get("priority")  # type: ignore[assignment]
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 1000:
            raise PolicyError(f"{path}.priority", f"must be an integer 0..1000, not {priority!r}")
    if "subject" not in spec:
        raise PolicyError(f"{path}.subject", "required")
    subject = _admin_selector(spec["subject"], f"{path}.subject", networks=False)
    if not isinstance(subject, PodPeer):
        raise PolicyError(f"{path}.subject", "must be namespaces or pods")
    actions = (Action.ALLOW, Action.DENY) if baseline else (Action.ALLOW, Action.DENY, Action.PASS)
    rules: dict[str, tuple[Rule, ...]] = {}
    for key, peer_key in (("ingress", "from"), ("egress", "to")):
        items = _list(spec.get(key), f"{path}.{key}")
        if len(items) > 100:
            raise PolicyError(f"{path}.{key}", "at most 100 rules")
        rules[key] = tuple(
            _admin_rule(item, f"{path}.{key}[{i}]", peer_key, actions, networks=key == "egress")
            for i, item in enumerate(items)
        )
    return AdminNetworkPolicy(name, priority, subject, rules["ingress"], rules["egress"], baseline)


def _admin_rule(doc: object, path: str, peer_key: str, actions: tuple[Action, ...], networks: bool) -> Rule:
    rule = _object(doc, path)
    _only(rule, {"name", "action", peer_key, "ports"}, path)
    name = rule.get("name", "")
    if not isinstance(name, str) or len(name) > 100:
        raise PolicyError(f"{path}.name", "must be a string of at most 100 characters")
    action = next((a for a in actions if a.value == rule.get("action")), None)
    if action is None:
        raise PolicyError(f"{path}.action", f"unsupported value {rule.get('action')!r}: must be one of {', '.join(a.value for a in actions)}")
    peers = _list(rule.get(peer_key), f"{path}.{peer_key}")
    if not peers:
        raise PolicyError(f"{path}.{peer_key}", "required, at least one peer")
    parsed = tuple(_admin_selector(p, f"{path}.{peer_key}[{i}]", networks) for i, p in enumerate(peers))
    ports = None
    if rule.get("ports") is not None:
        items = _list(rule["ports"], f"{path}.ports")
        if not items:
            raise PolicyError(f"{path}.ports", "must not be empty when present")
        ports = tuple(_admin_port(p, f"{path}.ports[{i}]") for i, p in enumerate(items))
    return Rule(name or path.rsplit(".", 1)[-1], action, parsed, ports)


def _admin_selector(doc: object, path: str, networks: bool) -> Peer:
    block = _object(doc, path)
    allowed = {"namespaces", "pods"} | ({"networks", "nodes"} if networks else set())
    _only(block, allowed, path)
    if len(block) != 1:
        raise PolicyError(path, f"exactly one of {', '.join(sorted(allowed))}")
    ((key, value),) = block.items()
    if key == "namespaces":
        return PodPeer(LabelSelector.from_dict(value if value is not None else {}, f"{path}.namespaces"), LabelSelector())
    if key == "pods":
        pods = _object(value, f"{path}.pods")
        _only(pods, {"namespaceSelector", "podSelector"}, f"{path}.pods")
        for field in ("namespaceSelector", "podSelector"):
            if field not in pods:
                raise PolicyError(f"{path}.pods.{field}", "required")
        return PodPeer(
            LabelSelector.from_dict(pods["namespaceSelector"] or {}, f"{path}.pods.namespaceSelector"),
            LabelSelector.from_dict(pods["podSelector"] or {}, f"{path}.pods.podSelector"),
        )
    if key == "nodes":
        raise PolicyError(f"{path}.nodes", "node peers are not supported: Tulle enforces pod-to-pod and pod-to-network traffic")
    cidrs = _list(value, f"{path}.networks")
    if not cidrs or len(cidrs) > 25:
        raise PolicyError(f"{path}.networks", "must hold 1..25 CIDRs")
    return Networks(tuple(_cidr(c, f"{path}.networks[{i}]") for i, c in enumerate(cidrs)))


def _admin_port(doc: object, path: str) -> PortMatch:
    item = _object(doc, path)
    _only(item, {"portNumber", "namedPort", "portRange"}, path)
    if len(item) != 1:
        raise PolicyError(path, "exactly one of portNumber, namedPort, portRange")
    ((key, value),) = item.items()
    if key == "namedPort":
        return NamedPort(_port_name(value, f"{path}.namedPort"), None)
    body = _object(value, f"{path}.{key}")
    if key == "portNumber":
        _only(body, {"protocol", "port"}, f"{path}.portNumber")
        port = _port_number(body.get("port"), f"{path}.portNumber.port")
        return PortRange(_protocol(body.get("protocol", "TCP"), f"{path}.portNumber.protocol"), port, port)
    _only(body, {"protocol", "start", "end"}, f"{path}.portRange")
    first = _port_number(body.get("start"), f"{path}.portRange.start")
    last = _port_number(body.get("end"), f"{path}.portRange.end")
    if last < first:
        raise PolicyError(f"{path}.portRange.end", f"must be greater than or equal to start ({first}), not {last}")
    return PortRange(_protocol(body.get("protocol", "TCP"), f"{path}.portRange.protocol"), first, last)


# --------------------------------------------------------------------------- scalars
def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _object(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"must be an object, not {type(value).__name__}")
    return value


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(path, f"must be a list, not {type(value).__name__}")
    return value


def _only(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PolicyError(_join(path, str(unknown[0])), "unknown field")


def _dns_name(value: object, path: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise PolicyError(path, f"must be a DNS subdomain name, not {value!r}")
    return value


def _protocol(value: object, path: str) -> Protocol:
    try:
        return Protocol(value)
    except ValueError:
        raise PolicyError(path, f"unsupported value {value!r}: must be TCP, UDP or SCTP") from None


def _port_number(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PolicyError(path, f"must be a port number 1..65535, not {value!r}")
    return value


def _port_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _PORT_NAME.match(value):
        raise PolicyError(path, f"invalid port name {value!r}: 1-15 lowercase alphanumerics or '-', with a letter")
    return value


def _cidr(value: object, path: str) -> IPNetwork:
    if not isinstance(value, str):
        raise PolicyError(path, f"must be a CIDR string, not {type(value).__name__}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        raise PolicyError(path, f"invalid CIDR {value!r}: {e}") from None
