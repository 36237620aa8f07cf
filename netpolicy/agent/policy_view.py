"""What a node agent knows of the cluster, from its ADS stream and its own attachments,
and the policy `ClusterState` that follows from it (sans-IO).

Rules:
- One ADS response is one change of one resource type: `apply_response` returns a new
  view with the response's resources upserted and its removals dropped, or raises
  `ViewError` naming the bad resource — then the view is unchanged and the agent NACKs
  with that message. A policy is parsed by `netpolicy.model` (the API's own rules), so a
  policy the control plane should have refused never half-applies here either.
- AdminNetworkPolicies and the BaselineAdminNetworkPolicy arrive as one type
  (`AdminNetworkPolicy`, `baseline` set for the latter), named `<name>` and
  `baseline/<name>`; they are kept apart from NetworkPolicies (whose names are
  `<namespace>/<name>`, so "baseline/default" could be one of them).
- The node's own pods are known by their attachments (the CNI backend's store is the
  authority for which local address belongs to which pod); their labels and ports come
  from the pod objects the control plane sends. A local pod without an attachment is not
  in the state; a remote pod is in it once the control plane reports its address.
- Two pods claiming one address (a deleted pod's stale status, a reused address) never
  fail the whole state: local attachments win, then the first remote pod in name order.
- A pod's namespace that has not arrived yet is taken as existing with only its
  `kubernetes.io/metadata.name` label, as the API server would give it.
- `ready` once every type the state needs (namespaces, pods, both policy types) has had
  its first response: until then the
  agent must not replace the kernel's rules (an empty view would mean "no policy").
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from netpolicy.cluster import ClusterState, ContainerPort, Namespace, Pod
from netpolicy.model import (
    POLICY_V1ALPHA1,
    AdminNetworkPolicy,
    NetworkPolicy,
    PolicyError,
    Protocol,
    parse_policy,
)

_PREFIX: Final = "type.googleapis.com/tulle.netpolicy.v1."
NODE: Final = _PREFIX + "Node"
NAMESPACE: Final = _PREFIX + "Namespace"
POD: Final = _PREFIX + "Pod"
NETWORK_POLICY: Final = _PREFIX + "NetworkPolicy"
ADMIN_NETWORK_POLICY: Final = _PREFIX + "AdminNetworkPolicy"
POLICY_TYPES: Final = (NAMESPACE, POD, NETWORK_POLICY, ADMIN_NETWORK_POLICY)


class ViewError(ValueError):
    """A resource the agent cannot use; the message names it (sent as the NACK)."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    ip: str
    node: str
    labels: Mapping[str, str]
    ports: tuple[ContainerPort, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)  # the mesh's own only


@dataclass(frozen=True, slots=True)
class LocalPod:
    namespace: str
    name: str
    ip: ipaddress.IPv4Address


@dataclass(frozen=True)
class PolicyView:
    node: str
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: Mapping[str, PodInfo] = field(default_factory=dict)  # "<ns>/<name>"
    policies: Mapping[str, NetworkPolicy] = field(default_factory=dict)  # "<ns>/<name>"
    admin_policies: Mapping[str, AdminNetworkPolicy] = field(default_factory=dict)  # "<name>", "baseline/<name>"
    local: Mapping[str, LocalPod] = field(default_factory=dict)  # "<ns>/<name>"
    received: frozenset[str] = frozenset()  # type URLs that had a first response

    @property
    def ready(self) -> bool:
        return all(t in self.received for t in POLICY_TYPES)

    # ------------------------------------------------------------------ changes
    def apply_response(self, type_url: str, resources: Mapping[str, Any], removed: Iterable[str]) -> PolicyView:
        """`resources`: name → decoded message of `type_url` (Namespace, Pod, NetworkPolicy,
        AdminNetworkPolicy)."""
        if type_url == NAMESPACE:
            namespaces = dict(self.namespaces)
            for name, msg in resources.items():
                try:
                    namespaces[name] = Namespace.create(msg.name or name, dict(msg.labels))
                except (PolicyError, ValueError) as e:
                    raise ViewError(f"Namespace {name}: {e}") from None
            for name in removed:
                namespaces.pop(name, None)
            return replace(self, namespaces=namespaces, received=self.received | {type_url})
        if type_url == POD:
            pods = dict(self.pods)
            for name, msg in resources.items():
                pods[name] = pod_info(name, msg)
            for name in removed:
                pods.pop(name, None)
            return replace(self, pods=pods, received=self.received | {type_url})
        if type_url == NETWORK_POLICY:
            policies = dict(self.policies)
            for name, msg in resources.items():
                policies[name] = _policy(name, msg)
            for name in removed:
                policies.pop(name, None)
            return replace(self, policies=policies, received=self.received | {type_url})
        if type_url == ADMIN_NETWORK_POLICY:
            admin = dict(self.admin_policies)
            for name, msg in resources.items():
                admin[name] = _admin_policy(name, msg)
            for name in removed:
                admin.pop(name, None)
            return replace(self, admin_policies=admin, received=self.received | {type_url})
        raise ViewError(f"type {type_url} is not a policy input")

    def with_local(self, pod: LocalPod) -> PolicyView:
        return replace(self, local={**self.local, f"{pod.namespace}/{pod.name}": pod})

    def without_local(self, namespace: str, name: str) -> PolicyView:
        local = dict(self.local)
        local.pop(f"{namespace}/{name}", None)
        return replace(self, local=local)

    # ------------------------------------------------------------------ state
    def pod(self, key: str) -> Pod | None:
        """The policy model's pod for a local attachment, None when its object is unknown."""
        local, info = self.local.get(key), self.pods.get(key)
        if local is None or info is None:
            return None
        return Pod(local.namespace, local.name, dict(info.labels), local.ip, self.node, info.ports)

    def state(self) -> ClusterState:
        namespaces = dict(self.namespaces)
        pods: list[Pod] = []
        taken: set[ipaddress.IPv4Address] = set()
        for key in sorted(self.local):
            pod = self.pod(key)
            if pod is not None and pod.ip not in taken:
                pods.append(pod)
                taken.add(pod.ip)
        for key in sorted(self.pods):
            info = self.pods[key]
            if info.node == self.node or not info.ip:
                continue  # local pods count only through their attachments
            ip = ipaddress.IPv4Address(info.ip)
            if ip in taken:
                continue
            taken.add(ip)
            pods.append(Pod(info.namespace, info.name, dict(info.labels), ip, info.node, info.ports))
        for pod in pods:
            if pod.namespace not in namespaces:
                namespaces[pod.namespace] = Namespace.create(pod.namespace)
        return ClusterState.build(namespaces.values(), pods, [*self.policies.values(), *self.admin_policies.values()])


def pod_info(name: str, msg: Any) -> PodInfo:
    try:
        if msg.ip:
            ipaddress.IPv4Address(msg.ip)
        ports = tuple(
            ContainerPort(int(p.port), Protocol(p.protocol or "TCP"), p.name or None) for p in msg.ports
        )
    except ValueError as e:
        raise ViewError(f"Pod {name}: {e}") from None
    return PodInfo(msg.namespace, msg.name, msg.ip, msg.node_name, dict(msg.labels), ports, dict(msg.annotations))


def _policy(name: str, msg: Any) -> NetworkPolicy:
    try:
        spec = json.loads(msg.spec_json or "{}")
    except ValueError as e:
        raise ViewError(f"NetworkPolicy {name}: spec_json is not JSON: {e}") from None
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": msg.name, "namespace": msg.namespace}, "spec": spec}
    try:
        policy = parse_policy(doc, f"NetworkPolicy {name}")
    except PolicyError as e:
        raise ViewError(str(e)) from None
    assert isinstance(policy, NetworkPolicy)
    return policy


def _admin_policy(name: str, msg: Any) -> AdminNetworkPolicy:
    kind = "BaselineAdminNetworkPolicy" if msg.baseline else "AdminNetworkPolicy"
    try:
        spec = json.loads(msg.spec_json or "{}")
    except ValueError as e:
        raise ViewError(f"{kind} {name}: spec_json is not JSON: {e}") from None
    doc = {"apiVersion": POLICY_V1ALPHA1, "kind": kind, "metadata": {"name": msg.name}, "spec": spec}
    try:
        policy = parse_policy(doc, f"{kind} {msg.name}")
    except PolicyError as e:
        raise ViewError(str(e)) from None
    assert isinstance(policy, AdminNetworkPolicy)
    return policy
