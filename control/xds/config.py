"""The config of one mesh generation, per node: which resources each node may be sent.

A `MeshConfig` is built for each new `MeshSnapshot` (after debouncing). It resolves a
node to a profile — proxies differ only in being proxyless or not, their namespace (bare
service names) and whether traffic is captured; agents differ by node name — and builds
each profile's `ResourceSet` once, on first demand, so a thousand sidecars of one
namespace share one set and every resource in it is serialized once.

A test hook, `ResourceOverride`, may replace or add resources after translation; it is
how tests make the control plane emit a deliberately invalid resource to see it NACKed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from control.xds.agent import agent_resources
from control.xds.mesh import MeshSnapshot
from control.xds.node_identity import NodeIdentity, NodeKind
from control.xds.resources import Resource, ResourceSet
from control.xds.sidecar import ProxyProfile, TranslationMemo, proxy_resources, workload_inbound

log = logging.getLogger("tulle.control.xds")

ResourceOverride = Callable[[NodeIdentity, list[Resource]], list[Resource]]


@dataclass(frozen=True, slots=True)
class AgentProfile:
    node_name: str


class MeshConfig:
    def __init__(
        self,
        mesh: MeshSnapshot,
        memo: TranslationMemo,
        generation: int,
        override: ResourceOverride | None = None,
    ) -> None:
        self.mesh = mesh
        self.generation = generation
        self.errors: list[str] = []
        self._memo = memo
        self._override = override
        self._sets: dict[ProxyProfile | AgentProfile, ResourceSet] = {}

    def profile(self, node: NodeIdentity) -> ProxyProfile | AgentProfile:
        if node.kind is NodeKind.AGENT:
            return AgentProfile(node.name)
        pod = self.mesh.pods.get(f"{node.namespace}/{node.name}") or self.mesh.pods_by_ip.get(node.ip)
        proxyless = node.kind is NodeKind.PROXYLESS
        return ProxyProfile(
            proxyless=proxyless,
            namespace=pod.namespace if pod else node.namespace,
            intercept=node.intercept,
            inbound=workload_inbound(self.mesh, pod) if pod is not None and node.intercept and not proxyless else None,
        )

    def resources_for(self, node: NodeIdentity) -> ResourceSet:
        profile = self.profile(node)
        if self._override is not None:
            return ResourceSet.build(self._override(node, self._build(profile)))
        found = self._sets.get(profile)
        if found is None:
            found = self._sets[profile] = ResourceSet.build(self._build(profile))
        return found

    def _build(self, profile: ProxyProfile | AgentProfile) -> list[Resource]:
        if isinstance(profile, AgentProfile):
            return agent_resources(self.mesh, profile.node_name, self._memo)
        errors: list[str] = []
        resources = proxy_resources(self.mesh, profile, self._memo, errors)
        for error in errors:
            if error not in self.errors:
                self.errors.append(error)
                log.warning("config generation %d: %s", self.generation, error)
        return resources
