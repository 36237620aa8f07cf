"""The cluster as policy sees it: namespaces with labels, pods with labels, an IP, a node
and container ports, and the policy objects in force.

Rules:
- A `ClusterState` is immutable; every change returns a new state (`with_pod`,
  `with_policy`, …), so a compiler can keep the previous one to diff against.
- Policies are keyed by (kind, namespace, name): applying one with an existing key
  replaces the whole object, as `kubectl apply` of a complete object does.
- A pod's IP is unique in the cluster; `pod_by_ip` finds the pod behind an address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from netpolicy.labels import check_labels
from netpolicy.model import (
    AdminNetworkPolicy,
    IPAddress,
    NamedPort,
    NetworkPolicy,
    Policy,
    PolicyError,
    Protocol,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    protocol: Protocol
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str]

    @classmethod
    def create(cls, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """The API server's view: `kubernetes.io/metadata.name` is always present."""
        checked = check_labels(dict(labels or {}), f"namespaces.{name}.labels")
        checked[NAMESPACE_NAME_LABEL] = name
        return cls(name, checked)


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: ipaddress.IPv4Address
    node: str
    ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def resolve(self, port: NamedPort) -> list[tuple[Protocol, int]]:
        """The (protocol, number) a named port means on this pod: by name, and by
        protocol when the reference carries one (NetworkPolicy does, ANP does not)."""
        return [
            (p.protocol, p.port)
            for p in self.ports
            if p.name == port.name and (port.protocol is None or p.protocol is port.protocol)
        ]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


Endpoint = Pod | IPAddress


@dataclass(frozen=True)
class ClusterState:
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: Mapping[tuple[str, str], Pod] = field(default_factory=dict)
    policies: Mapping[tuple[str, str | None, str], Policy] = field(default_factory=dict)

    @classmethod
    def build(
        cls, namespaces: Iterable[Namespace], pods: Iterable[Pod], policies: Iterable[Policy] = ()
    ) -> ClusterState:
        by_name = {ns.name: ns for ns in namespaces}
        by_key: dict[tuple[str, str], Pod] = {}
        by_ip: dict[IPAddress, Pod] = {}
        for pod in pods:
            if pod.namespace not in by_name:
                raise PolicyError(f"pods.{pod}", f"namespace {pod.namespace!r} does not exist")
            holder = by_ip.setdefault(pod.ip, pod)
            if holder is not pod:
                raise PolicyError(f"pods.{pod}.ip", f"{pod.ip} already belongs to pod {holder}")
            by_key[pod.key] = pod
        return cls(by_name, by_key, {p.key: p for p in policies})

    # ------------------------------------------------------------------ changes
    def with_namespace(self, namespace: Namespace) -> ClusterState:
        return ClusterState({**self.namespaces, namespace.name: namespace}, self.pods, self.policies)

    def with_pod(self, pod: Pod) -> ClusterState:
        if pod.namespace not in self.namespaces:
            raise PolicyError(f"pods.{pod.namespace}/{pod.name}", f"namespace {pod.namespace!r} does not exist")
        holder = self.pod_by_ip.get(pod.ip)
        if holder is not None and holder.key != pod.key:
            raise PolicyError(f"pods.{pod.namespace}/{pod.name}.ip", f"{pod.ip} already belongs to pod {holder}")
        new = ClusterState(self.namespaces, {**self.pods, pod.key: pod}, self.policies)
        by_ip = {**self.pod_by_ip, pod.ip: pod}
        old = self.pods.get(pod.key)
        if old is not None and old.ip != pod.ip:
            del by_ip[old.ip]
        new.__dict__["pod_by_ip"] = by_ip
        return self._share_policy_views(new)

    def without_pod(self, namespace: str, name: str) -> ClusterState:
        pods = dict(self.pods)
        pods.pop((namespace, name), None)
        return self._share_policy_views(ClusterState(self.namespaces, pods, self.policies))

    _POLICY_VIEWS = ("network_policies", "admin_policies", "baseline_policy")

    def _share_policy_views(self, new: ClusterState) -> ClusterState:
        """Pod changes leave the policies alone: the new state reuses the indexes of
        policies already built for this one (they are immutable)."""
        for view in self._POLICY_VIEWS:
            if view in self.__dict__:
                new.__dict__[view] = self.__dict__[view]
        return new

    def with_policy(self, policy: Policy) -> ClusterState:
        return ClusterState(self.namespaces, self.pods, {**self.policies, policy.key: policy})

    def without_policy(self, kind: str, namespace: str | None, name: str) -> ClusterState:
        policies = dict(self.policies)
        policies.pop((kind, namespace, name), None)
        return ClusterState(self.namespaces, self.pods, policies)

    # ------------------------------------------------------------------ views
    @cached_property
    def pod_by_ip(self) -> Mapping[IPAddress, Pod]:
        return {pod.ip: pod for pod in self.pods.values()}

    @cached_property
    def network_policies(self) -> Mapping[str, tuple[NetworkPolicy, ...]]:
        """NetworkPolicies by namespace, in name order (order does not change verdicts)."""
        by_ns: dict[str, list[NetworkPolicy]] = {}
        for p in self.policies.values():
            if isinstance(p, NetworkPolicy):
                by_ns.setdefault(p.namespace, []).append(p)
        return {ns: tuple(sorted(ps, key=lambda p: p.name)) for ns, ps in by_ns.items()}

    @cached_property
    def admin_policies(self) -> tuple[AdminNetworkPolicy, ...]:
        """AdminNetworkPolicies in evaluation order: priority, then name (the API leaves
        equal priorities undefined; the name makes the order deterministic)."""
        return tuple(sorted(
            (p for p in self.policies.values() if isinstance(p, AdminNetworkPolicy) and not p.baseline),
            key=lambda p: (p.priority, p.name),
        ))

    @cached_property
    def baseline_policy(self) -> AdminNetworkPolicy | None:
        for p in self.policies.values():
            if isinstance(p, AdminNetworkPolicy) and p.baseline:
                return p
        return None

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        ns = self.namespaces.get(namespace)
        return ns.labels if ns is not None else {NAMESPACE_NAME_LABEL: namespace}

    def endpoint(self, address: IPAddress) -> Endpoint:
        """The pod at `address`, or the bare address when no pod has it."""
        return self.pod_by_ip.get(address, address)
