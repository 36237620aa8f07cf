"""The mesh model as the xDS translator reads it: a small, typed, immutable snapshot.

Theory of operation: the store hands the control plane Kubernetes-shaped documents
(plain dicts with apiVersion, kind, metadata, spec, status). `MeshSnapshot.from_documents`
reads the kinds the xDS translation needs — Namespace, Pod, Service, Endpoints, Node,
VirtualService, DestinationRule, NetworkPolicy, AdminNetworkPolicy,
BaselineAdminNetworkPolicy, PeerAuthentication, AuthorizationPolicy — into frozen
dataclasses and ignores every other kind. Documents are assumed already validated by the API edge; a document
that still lacks what translation needs raises `MeshDocumentError` naming the field.

Rules:
- Every type here is a frozen, hashable value. The translator memoises per-service work
  keyed by these values, so an unchanged service costs a dict lookup on the next push.
- Names are resolved the way Istio resolves them: a short host `reviews` in a
  VirtualService or DestinationRule of namespace `ns` means `reviews.ns.svc.cluster.local`.
- Endpoints are v1 Endpoints (derived from Pods and Services by the store); a Service
  without an Endpoints document simply has no endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DOMAIN_SUFFIX = "svc.cluster.local"
TRUST_DOMAIN = "cluster.local"

Doc = Mapping[str, Any]


# Pod annotations the mesh reads (injection, capture); others are not carried.
MESH_ANNOTATION_PREFIXES = ("sidecar.tulle.io/", "traffic.tulle.io/")


class MeshDocumentError(ValueError):
    """A document lacks what translation needs; the message names the field path."""


def _labels(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def _require(doc: Doc, *path: str) -> Any:
    node: Any = doc
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            kind = doc.get("kind", "?")
            name = doc.get("metadata", {}).get("name", "?")
            raise MeshDocumentError(f"{kind} {name!r}: missing {'.'.join(path[: i + 1])}")
        node = node[key]
    return node


def fqdn(host: str, namespace: str) -> str:
    """Resolve a host as Istio does: short names are relative to `namespace`."""
    if host.endswith("." + DOMAIN_SUFFIX) or host == "*":
        return host
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{DOMAIN_SUFFIX}"
    if len(parts) == 2:
        return f"{host}.{DOMAIN_SUFFIX}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    namespace: str
    ip: str
    node_name: str
    labels: tuple[tuple[str, str], ...]
    ports: tuple[ContainerPort, ...]
    service_account: str = "default"
    sidecar: bool = False  # injected with a proxy: peers reach it over mTLS (auto mTLS)
    resource_version: str = ""  # of the stored object; agents' ACKs report it back
    annotations: tuple[tuple[str, str], ...] = ()  # the mesh's own (MESH_ANNOTATION_PREFIXES)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: str  # L4: TCP or UDP
    target_port: int | str
    app_protocol: str  # Istio's protocol selection: http, http2, grpc, tcp …

    @property
    def is_http(self) -> bool:
        """Istio's protocol selection: appProtocol first, then the port-name prefix."""
        proto = self.app_protocol or self.name.split("-", 1)[0]
        return proto.lower() in ("http", "http2", "grpc", "grpc-web", "h2c")


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...]
    resource_version: str = ""

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.{DOMAIN_SUFFIX}"


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    ip: str
    node_name: str
    pod: str  # "<ns>/<name>" of the targetRef Pod, "" when none
    ready: bool


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class EndpointSubset:
    addresses: tuple[EndpointAddress, ...]
    ports: tuple[EndpointPort, ...]


@dataclass(frozen=True, slots=True)
class Endpoints:
    name: str
    namespace: str
    subsets: tuple[EndpointSubset, ...]


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    internal_ip: str
    pod_cidr: str
    vtep_mac: str


@dataclass(frozen=True, slots=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]  # fully qualified
    http: tuple[Any, ...]  # the spec's http rules, frozen (see `freeze`)
    applies_to_mesh: bool


@dataclass(frozen=True, slots=True)
class DestinationRule:
    name: str
    namespace: str
    host: str  # fully qualified
    traffic_policy: Any  # frozen spec.trafficPolicy or None
    subsets: tuple[Any, ...]  # frozen spec.subsets


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    name: str
    namespace: str
    spec: Any  # frozen; interpreted by netpolicy, carried here for agents
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class AdminNetworkPolicy:
    """An AdminNetworkPolicy, or the BaselineAdminNetworkPolicy when `baseline`
    (both cluster-scoped)."""

    name: str
    spec: Any  # frozen; interpreted by netpolicy, carried here for agents
    resource_version: str = ""
    baseline: bool = False


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    name: str
    namespace: str
    selector: tuple[tuple[str, str], ...] | None  # matchLabels; None: the whole namespace
    mode: str  # UNSET, DISABLE, PERMISSIVE, STRICT
    port_modes: tuple[tuple[int, str], ...]  # portLevelMtls (workload target ports)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    selector: tuple[tuple[str, str], ...] | None  # matchLabels; None: the whole namespace
    action: str  # ALLOW, DENY, AUDIT, CUSTOM
    rules: tuple[Any, ...] | None  # frozen spec.rules; None when absent
    target_refs: bool  # targetRef(s) (gateways, waypoints) rather than a selector


class Frozen(dict[str, Any]):
    """A read-only, hashable mapping for spec fragments kept verbatim."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError("Frozen is read-only")


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Frozen({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class MeshSnapshot:
    """Everything the translator reads, indexed for it."""

    namespaces: tuple[str, ...] = ()
    pods: Mapping[str, Pod] = field(default_factory=dict)  # "<ns>/<name>"
    pods_by_ip: Mapping[str, Pod] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)  # hostname
    endpoints: Mapping[str, Endpoints] = field(default_factory=dict)  # service hostname
    nodes: Mapping[str, Node] = field(default_factory=dict)
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: Mapping[str, DestinationRule] = field(default_factory=dict)  # host
    network_policies: tuple[NetworkPolicy, ...] = ()
    admin_network_policies: tuple[AdminNetworkPolicy, ...] = ()  # baseline last
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    trust_domain: str = TRUST_DOMAIN  # of the SPIFFE IDs that peers must present
    namespace_objects: Mapping[str, Namespace] = field(default_factory=dict)  # name (labels for agents)

    @classmethod
    def from_documents(cls, docs: Iterable[Doc], trust_domain: str = TRUST_DOMAIN) -> MeshSnapshot:
        return cls.from_objects((o for d in docs if (o := read_document(d)) is not None), trust_domain)

    @classmethod
    def from_objects(cls, objects: Iterable[object], trust_domain: str = TRUST_DOMAIN) -> MeshSnapshot:
        namespaces: dict[str, Namespace] = {}
        pods: dict[str, Pod] = {}
        services: dict[str, Service] = {}
        endpoints: dict[str, Endpoints] = {}
        nodes: dict[str, Node] = {}
        vss: list[VirtualService] = []
        drs: dict[str, DestinationRule] = {}
        nps: list[NetworkPolicy] = []
        anps: list[AdminNetworkPolicy] = []
        pas: list[PeerAuthentication] = []
        aps: list[AuthorizationPolicy] = []
        for obj in objects:
            if isinstance(obj, Namespace):
                namespaces[obj.name] = obj
            elif isinstance(obj, Pod):
                pods[obj.key] = obj
            elif isinstance(obj, Service):
                services[obj.hostname] = obj
            elif isinstance(obj, Endpoints):
                endpoints[f"{obj.name}.{obj.namespace}.{DOMAIN_SUFFIX}"] = obj
            elif isinstance(obj, Node):
                nodes[obj.name] = obj
            elif isinstance(obj, VirtualService):
                vss.append(obj)
            elif isinstance(obj, DestinationRule):
                # Istio: for one host, the oldest rule wins; documents come in store order.
                drs.setdefault(obj.host, obj)
            elif isinstance(obj, NetworkPolicy):
                nps.append(obj)
            elif isinstance(obj, AdminNetworkPolicy):
                anps.append(obj)
            elif isinstance(obj, PeerAuthentication):
                pas.append(obj)
            elif isinstance(obj, AuthorizationPolicy):
                aps.append(obj)
        return cls(
            namespaces=tuple(sorted(namespaces)),
            pods=pods,
            pods_by_ip={p.ip: p for p in pods.values() if p.ip},
            services=dict(sorted(services.items())),
            endpoints=endpoints,
            nodes=dict(sorted(nodes.items())),
            virtual_services=tuple(sorted(vss, key=lambda v: (v.namespace, v.name))),
            destination_rules=drs,
            network_policies=tuple(sorted(nps, key=lambda n: (n.namespace, n.name))),
            admin_network_policies=tuple(sorted(anps, key=lambda a: (a.baseline, a.name))),
            peer_authentications=tuple(sorted(pas, key=lambda a: (a.namespace, a.name))),
            authorization_policies=tuple(sorted(aps, key=lambda a: (a.namespace, a.name))),
            trust_domain=trust_domain,
            namespace_objects=dict(sorted(namespaces.items())),
        )


def read_document(doc: Doc) -> object | None:
    """The model value of one document, or None for a kind translation does not read."""
    reader = _READERS.get(str(doc.get("kind")))
    return reader(doc) if reader is not None else None


class MeshDocuments:
    """The documents of a store as the translator needs them, kept current by upserts and
    deletes (a store's List then Watch), each parsed once when it changes."""

    def __init__(self, trust_domain: str = TRUST_DOMAIN) -> None:
        self.trust_domain = trust_domain
        self._objects: dict[tuple[str, str, str], object] = {}

    @staticmethod
    def key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
        cluster_scoped = kind in ("Namespace", "Node", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")
        return (kind, "" if cluster_scoped else namespace or "default", name)

    def upsert(self, doc: Doc) -> bool:
        """Record a created or updated document; False for a kind translation ignores."""
        obj = read_document(doc)
        if obj is None:
            return False
        meta = doc.get("metadata") or {}
        self._objects[self.key(str(doc["kind"]), str(meta.get("namespace") or ""), str(meta["name"]))] = obj
        return True

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        return self._objects.pop(self.key(kind, namespace, name), None) is not None

    def snapshot(self) -> MeshSnapshot:
        return MeshSnapshot.from_objects(self._objects.values(), self.trust_domain)


def _meta(doc: Doc) -> tuple[str, str]:
    name = _require(doc, "metadata", "name")
    return str(name), str(doc["metadata"].get("namespace") or "default")


def _read_namespace(doc: Doc) -> Namespace:
    name = str(_require(doc, "metadata", "name"))
    return Namespace(name, _labels(doc["metadata"].get("labels")), _resource_version(doc))


def _resource_version(doc: Doc) -> str:
    return str((doc.get("metadata") or {}).get("resourceVersion") or "")


def _read_pod(doc: Doc) -> Pod:
    name, ns = _meta(doc)
    spec = doc.get("spec") or {}
    status = doc.get("status") or {}
    ports = tuple(
        ContainerPort(str(p.get("name", "")), int(p["containerPort"]), str(p.get("protocol", "TCP")))
        for c in spec.get("containers") or ()
        for p in c.get("ports") or ()
        if "containerPort" in p
    )
    return Pod(
        name=name,
        namespace=ns,
        ip=str(status.get("podIP") or ""),
        node_name=str(spec.get("nodeName") or ""),
        labels=_labels(doc["metadata"].get("labels")),
        ports=ports,
        service_account=str(spec.get("serviceAccountName") or "default"),
        sidecar=_has_sidecar(doc),
        resource_version=_resource_version(doc),
        annotations=tuple(sorted(
            (k, str(v)) for k, v in (doc["metadata"].get("annotations") or {}).items()
            if k.startswith(MESH_ANNOTATION_PREFIXES)
        )),
    )


SIDECAR_CONTAINERS = frozenset({"tulle-proxy", "istio-proxy"})


def _has_sidecar(doc: Doc) -> bool:
    """Injected (`sidecar.tulle.io/inject: "true"`, as tulle-cni reads it) or carrying a
    proxy container; Istio-injected pods count too."""
    annotations = doc["metadata"].get("annotations") or {}
    if str(annotations.get("sidecar.tulle.io/inject", "")).lower() == "true":
        return True
    containers = (doc.get("spec") or {}).get("containers") or ()
    return any(c.get("name") in SIDECAR_CONTAINERS for c in containers)


def _read_service(doc: Doc) -> Service:
    name, ns = _meta(doc)
    spec = doc.get("spec") or {}
    ports = []
    for i, p in enumerate(spec.get("ports") or ()):
        if "port" not in p:
            raise MeshDocumentError(f"Service {name!r}: missing spec.ports[{i}].port")
        ports.append(
            ServicePort(
                name=str(p.get("name", "")),
                port=int(p["port"]),
                protocol=str(p.get("protocol", "TCP")),
                target_port=p.get("targetPort", p["port"]),
                app_protocol=str(p.get("appProtocol", "")),
            )
        )
    return Service(
        name=name,
        namespace=ns,
        cluster_ip=str(spec.get("clusterIP") or ""),
        ports=tuple(ports),
        selector=_labels(spec.get("selector")),
        resource_version=_resource_version(doc),
    )


def _read_endpoints(doc: Doc) -> Endpoints:
    name, ns = _meta(doc)
    subsets = []
    for s in doc.get("subsets") or ():
        addresses = []
        for ready, key in ((True, "addresses"), (False, "notReadyAddresses")):
            for a in s.get(key) or ():
                ref = a.get("targetRef") or {}
                pod = f"{ref.get('namespace') or ns}/{ref['name']}" if ref.get("name") else ""
                addresses.append(EndpointAddress(str(a["ip"]), str(a.get("nodeName", "")), pod, ready))
        ports = tuple(
            EndpointPort(str(p.get("name", "")), int(p["port"]), str(p.get("protocol", "TCP")))
            for p in s.get("ports") or ()
        )
        subsets.append(EndpointSubset(tuple(addresses), ports))
    return Endpoints(name, ns, tuple(subsets))


def _read_node(doc: Doc) -> Node:
    name = str(_require(doc, "metadata", "name"))
    addresses = (doc.get("status") or {}).get("addresses") or ()
    internal = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "")
    annotations = doc["metadata"].get("annotations") or {}
    return Node(
        name=name,
        internal_ip=str(internal),
        pod_cidr=str((doc.get("spec") or {}).get("podCIDR") or ""),
        vtep_mac=str(annotations.get("tulle.io/vtep-mac", "")),
    )


def _read_virtual_service(doc: Doc) -> VirtualService:
    name, ns = _meta(doc)
    spec = doc.get("spec") or {}
    gateways = spec.get("gateways") or ["mesh"]
    return VirtualService(
        name=name,
        namespace=ns,
        hosts=tuple(fqdn(str(h), ns) for h in spec.get("hosts") or ()),
        http=freeze(spec.get("http") or ()),
        applies_to_mesh="mesh" in gateways,
    )


def _read_destination_rule(doc: Doc) -> DestinationRule:
    name, ns = _meta(doc)
    spec = doc.get("spec") or {}
    host = _require(doc, "spec", "host")
    return DestinationRule(
        name=name,
        namespace=ns,
        host=fqdn(str(host), ns),
        traffic_policy=freeze(spec.get("trafficPolicy")),
        subsets=freeze(spec.get("subsets") or ()),
    )


def _read_network_policy(doc: Doc) -> NetworkPolicy:
    name, ns = _meta(doc)
    return NetworkPolicy(name, ns, freeze(doc.get("spec") or {}), _resource_version(doc))


def _read_admin_network_policy(doc: Doc) -> AdminNetworkPolicy:
    name = str(_require(doc, "metadata", "name"))
    return AdminNetworkPolicy(name, freeze(doc.get("spec") or {}), _resource_version(doc),
                              baseline=doc.get("kind") == "BaselineAdminNetworkPolicy")


def _selector(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    selector = spec.get("selector")
    if selector is None:
        return None
    return _labels(selector.get("matchLabels") or {})


def _read_peer_authentication(doc: Doc) -> PeerAuthentication:
    name, ns = _meta(doc)
    spec = doc.get("spec") or {}
    return PeerAuthentication(
        name=name,
        namespace=ns,
        selector=_selector(spec),
        mode=str((spec.get("mtls") or {}).get("mode") or "UNSET"),
        port_modes=tuple(sorted(
            (int(port), str((m or {}).get("mode") or "UNSET")) for port, m in (spec.get("portLevelMtls") or {}).items()
        )),
    )


def _read_authorization_policy(doc: Doc) -> AuthorizationPolicy:
    name, ns = _meta(doc)
    spec = doc.get("spec") or {}
    rules = spec.get("rules")
    return AuthorizationPolicy(
        name=name,
        namespace=ns,
        selector=_selector(spec),
        action=str(spec.get("action") or "ALLOW"),
        rules=None if rules is None else freeze(rules),
        target_refs=bool(spec.get("targetRef") or spec.get("targetRefs")),
    )


_READERS: dict[str, Any] = {
    "Namespace": _read_namespace,
    "Pod": _read_pod,
    "Service": _read_service,
    "Endpoints": _read_endpoints,
    "Node": _read_node,
    "VirtualService": _read_virtual_service,
    "DestinationRule": _read_destination_rule,
    "NetworkPolicy": _read_network_policy,
    "AdminNetworkPolicy": _read_admin_network_policy,
    "BaselineAdminNetworkPolicy": _read_admin_network_policy,
    "PeerAuthentication": _read_peer_authentication,
    "AuthorizationPolicy": _read_authorization_policy,
}
