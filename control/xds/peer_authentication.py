"""The mTLS mode in force for a workload's inbound port: Istio's PeerAuthentication rules.

Rules (Istio's, so existing manifests mean the same here):
- Three scopes, most specific first: a policy with a workload selector in the pod's
  namespace whose matchLabels the pod carries; the namespace's policy (no selector);
  the mesh-wide policy (no selector) in the root namespace, `istio-system`.
- Within the workload policy, `portLevelMtls[<target port>]` overrides `mtls` for
  that port. A mode of UNSET (or no mode) inherits from the next scope out.
- When several policies compete in one scope, the oldest wins in Istio; documents here
  carry no order beyond their names, so the first by name wins (deterministic).
- With no policy at all, PERMISSIVE: mTLS from sidecars, plaintext from the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from control.xds.mesh import PeerAuthentication

ROOT_NAMESPACE = "istio-system"


class MtlsMode(Enum):
    STRICT = "STRICT"  # mTLS only
    PERMISSIVE = "PERMISSIVE"  # mTLS or plaintext, told apart by the TLS inspector
    DISABLE = "DISABLE"  # plaintext: TLS bytes pass through untouched

    @property
    def accepts_mtls(self) -> bool:
        return self is not MtlsMode.DISABLE

    @property
    def accepts_plaintext(self) -> bool:
        return self is not MtlsMode.STRICT


def _selects(policy: PeerAuthentication, labels: dict[str, str]) -> bool:
    return policy.selector is not None and all(labels.get(k) == v for k, v in policy.selector)


def mtls_mode(
    policies: Iterable[PeerAuthentication], namespace: str, labels: Iterable[tuple[str, str]], port: int | None
) -> MtlsMode:
    """The mode for `port` of a pod in `namespace` with `labels` (None: the pod's own
    mode, for ports no policy names)."""
    pod_labels = dict(labels)
    workload = namespace_wide = mesh_wide = None
    for p in policies:
        if p.namespace == namespace and _selects(p, pod_labels):
            workload = workload or p
        elif p.namespace == namespace and p.selector is None:
            namespace_wide = namespace_wide or p
        elif p.namespace == ROOT_NAMESPACE and p.selector is None:
            mesh_wide = mesh_wide or p
    candidates = []
    if workload is not None:
        if port is not None:
            candidates.append(dict(workload.port_modes).get(port, "UNSET"))
        candidates.append(workload.mode)
    candidates += [p.mode for p in (namespace_wide, mesh_wide) if p is not None]
    for mode in candidates:
        if mode != "UNSET":
            return MtlsMode(mode)
    return MtlsMode.PERMISSIVE


def relevant(policies: Iterable[PeerAuthentication], namespace: str) -> tuple[PeerAuthentication, ...]:
    """The policies that can affect a pod of `namespace` (the key of memoised work)."""
    return tuple(p for p in policies if p.namespace in (namespace, ROOT_NAMESPACE))
