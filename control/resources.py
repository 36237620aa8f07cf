"""The kinds tulle-control stores, and how kubectl-style names resolve to them.

Rules:
- Every kind has one apiVersion (the one users write), a lower-case plural (what
  kubectl prints in `networkpolicies.networking.k8s.io "x" not found`), kubectl's short
  names, and a scope: namespaced objects live in a namespace (default "default"),
  cluster-scoped ones have none.
- Lookup by name is kubectl's: the kind, its lower-case form, its plural, a short name,
  or `plural.group` all resolve to the same kind.
- An object's store key is `<kind>/<namespace>/<name>` (namespace empty when
  cluster-scoped), so a prefix names all objects of a kind, or of a kind in a namespace.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    api_version: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        group, _, _ = self.api_version.rpartition("/")
        return group

    @property
    def resource(self) -> str:
        """kubectl's `plural.group` (just the plural for the core group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "v1", "namespaces", False, ("ns",)),
    Kind("Node", "v1", "nodes", False, ("no",)),
    Kind("Pod", "v1", "pods", True, ("po",)),
    Kind("Service", "v1", "services", True, ("svc",)),
    Kind("Endpoints", "v1", "endpoints", True, ("ep",)),
    Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", True, ("netpol",)),
    Kind("AdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1", "adminnetworkpolicies", False, ("anp",)),
    Kind("BaselineAdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1", "baselineadminnetworkpolicies", False, ("banp",)),
    Kind("VirtualService", "networking.istio.io/v1", "virtualservices", True, ("vs",)),
    Kind("DestinationRule", "networking.istio.io/v1", "destinationrules", True, ("dr",)),
    Kind("PeerAuthentication", "security.istio.io/v1", "peerauthentications", True, ("pa",)),
    Kind("AuthorizationPolicy", "security.istio.io/v1", "authorizationpolicies", True, ("ap",)),
)

BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}

_ALIASES: dict[str, Kind] = {}
for _kind in KINDS:
    for _alias in (_kind.name, _kind.name.lower(), _kind.plural, _kind.resource, *_kind.short_names):
        _ALIASES[_alias.lower()] = _kind


class UnknownKindError(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f'the server doesn\'t have a resource type "{name}"')
        self.name = name


def lookup(name: str) -> Kind:
    """The kind a kubectl-style name means; `UnknownKindError` for anything else."""
    try:
        return _ALIASES[name.lower()]
    except KeyError:
        raise UnknownKindError(name) from None


DEFAULT_NAMESPACE = "default"


def object_key(kind: Kind, namespace: str, name: str) -> str:
    return f"{kind.name}/{namespace if kind.namespaced else ''}/{name}"


def kind_prefix(kind: Kind, namespace: str = "") -> str:
    """The key prefix of every object of `kind` (in `namespace`, when given)."""
    if kind.namespaced and namespace:
        return f"{kind.name}/{namespace}/"
    return f"{kind.name}/"
