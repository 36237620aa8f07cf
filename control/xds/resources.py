"""xDS resources as the server holds them: each serialized once, shared by every stream.

Theory of operation: a `Resource` wraps one typed message (a Cluster, a Listener, a
Tulle Node …) and, when built, serializes it deterministically exactly once. Its version
is a hash of those bytes, so equal content has equal versions on every replica and after
restarts (a client reconnecting with `initial_resource_versions` is not resent what it
holds). The resource also keeps the encoded entry it contributes to a DiscoveryResponse
(field `resources`) and to a DeltaDiscoveryResponse (field `resources`): protobuf
messages concatenate, so a response is the join of its entries and a small header, and
a push to a thousand streams serializes each resource once, not a thousand times.

A `ResourceSet` is everything one node may be sent: per type URL, name → Resource, with a
per-type version (a hash over names and versions). `changes_since(older)` lists, per type,
the names whose version differs; it is memoised, because every stream that held `older`
asks the same question.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping
from typing import Final

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

_PREFIX: Final = "type.googleapis.com/"
LISTENER: Final = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE: Final = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET: Final = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
TULLE_NODE: Final = _PREFIX + "tulle.netpolicy.v1.Node"
TULLE_POD: Final = _PREFIX + "tulle.netpolicy.v1.Pod"
TULLE_NAMESPACE: Final = _PREFIX + "tulle.netpolicy.v1.Namespace"
TULLE_NETWORK_POLICY: Final = _PREFIX + "tulle.netpolicy.v1.NetworkPolicy"
TULLE_SERVICE: Final = _PREFIX + "tulle.netpolicy.v1.Service"
TULLE_ADMIN_NETWORK_POLICY: Final = _PREFIX + "tulle.netpolicy.v1.AdminNetworkPolicy"

# Push order across types (make-before-break, as Envoy's ADS guidance says): clusters
# before the endpoints they name, listeners before the routes they name.
PUSH_ORDER: Final = (
    CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TULLE_NODE, TULLE_NAMESPACE, TULLE_POD, TULLE_NETWORK_POLICY,
    TULLE_ADMIN_NETWORK_POLICY, TULLE_SERVICE,
)

# In state-of-the-world, a Listener or Cluster response is the full set: what it omits is
# deleted. For other types, omission means nothing, so a push may carry only changes.
FULL_STATE_TYPES: Final = frozenset({LISTENER, CLUSTER})

TYPE_ALIASES: Final = {
    "listeners": LISTENER,
    "routes": ROUTE,
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
    "secrets": SECRET,
    "nodes": TULLE_NODE,
    "pods": TULLE_POD,
    "namespaces": TULLE_NAMESPACE,
    "networkpolicies": TULLE_NETWORK_POLICY,
    "adminnetworkpolicies": TULLE_ADMIN_NETWORK_POLICY,
    "services": TULLE_SERVICE,
}


def type_url_of(message: Message) -> str:
    return _PREFIX + message.DESCRIPTOR.full_name


class Resource:
    """One named xDS resource, serialized once; immutable after construction."""

    __slots__ = ("delta_chunk", "message", "name", "sotw_chunk", "type_url", "version")

    def __init__(self, name: str, message: Message, type_url: str | None = None) -> None:
        self.name = sys.intern(name)  # shared with every stream's subscription of it
        self.message = message
        self.type_url = type_url or type_url_of(message)
        payload = message.SerializeToString(deterministic=True)
        self.version = hashlib.blake2b(payload, digest_size=8).hexdigest()
        packed = any_pb2.Any(type_url=self.type_url, value=payload)
        self.sotw_chunk = discovery_pb2.DiscoveryResponse(resources=[packed]).SerializeToString()
        self.delta_chunk = discovery_pb2.DeltaDiscoveryResponse(
            resources=[discovery_pb2.Resource(name=name, version=self.version, resource=packed)]
        ).SerializeToString()

    def __repr__(self) -> str:
        return f"Resource({self.type_url.rsplit('.', 1)[-1]} {self.name!r} v{self.version})"


class ResourceSet:
    """What one node may be sent: type URL → name → Resource, with per-type versions."""

    __slots__ = ("_changes", "by_type", "versions")

    def __init__(self, by_type: Mapping[str, Mapping[str, Resource]]) -> None:
        self.by_type = by_type
        self.versions = {t: _set_version(rs.values()) for t, rs in by_type.items()}
        self._changes: dict[int, tuple[ResourceSet, dict[str, frozenset[str]]]] = {}

    @classmethod
    def build(cls, resources: Iterable[Resource]) -> ResourceSet:
        by_type: dict[str, dict[str, Resource]] = {}
        for r in resources:
            by_type.setdefault(r.type_url, {})[r.name] = r
        return cls(by_type)

    def get(self, type_url: str) -> Mapping[str, Resource]:
        return self.by_type.get(type_url, _EMPTY)

    def version(self, type_url: str) -> str:
        return self.versions.get(type_url) or EMPTY_SET_VERSION

    def changes_since(self, older: ResourceSet) -> dict[str, frozenset[str]]:
        """Per type, the names added, removed or changed since `older` (memoised)."""
        hit = self._changes.get(id(older))
        if hit is not None and hit[0] is older:
            return hit[1]
        changes: dict[str, frozenset[str]] = {}
        for type_url in set(self.by_type) | set(older.by_type):
            if self.versions.get(type_url) == older.versions.get(type_url):
                continue
            new, old = self.get(type_url), older.get(type_url)
            names = {n for n, r in new.items() if (o := old.get(n)) is None or o.version != r.version}
            names.update(n for n in old if n not in new)
            changes[type_url] = frozenset(names)
        # Keep only the newest predecessor: streams lag by at most a push or two.
        self._changes = {id(older): (older, changes)}
        return changes


_EMPTY: Mapping[str, Resource] = {}


def _set_version(resources: Iterable[Resource]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for r in sorted(resources, key=lambda r: r.name):
        h.update(r.name.encode())
        h.update(r.version.encode())
    return h.hexdigest()


EMPTY_SET_VERSION: Final = _set_version(())
