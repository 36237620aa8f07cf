"""Who may obtain which identity: the workload attestation rules of tulle-control.

The model (the shape of Istio's node agent and SPIRE's k8s attestor, for a mesh
without Kubernetes):

1. Each tulle-agent acts for exactly one node. It proves which one to tulle-control
   by the channel it uses: the root-only unix socket on the same machine, or, across
   machines, a client certificate that tulle-control's CA issued for that node.
2. A sidecar never claims an identity. It sends a CSR to its own node's agent over
   the agent's unix socket; the agent learns which pod is calling from the kernel
   (SO_PEERCRED gives the caller's pid, /proc/<pid>/ns/net the network namespace the
   agent itself created for that pod at CNI ADD), not from anything the caller says.
3. The agent forwards (its node, the pod, the CSR) to tulle-control, which applies
   `identity_for` below: the pod must exist, must run on the agent's node, and gets
   the SPIFFE ID of its namespace and service account; nothing else. The CA then
   refuses a CSR asking for any other name (see `authority`).

4. No pod obtains an identity in `tulle-system`: that namespace holds the identities of
   Tulle itself (agents, operators, the control plane; see `control.caller`), which
   `tulle-control issue-cert` alone mints.

So a compromised sidecar can obtain only the identity it already has, and a
compromised agent only workload identities of pods scheduled on its own node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control.ca.spiffe import SYSTEM_NAMESPACE, InvalidSpiffeId, SpiffeId


class NotAuthorized(PermissionError):
    """The caller may not obtain the identity it asked for; the message says why."""


def identity_for(pod: Mapping[str, Any] | None, node: str, pod_ref: str, trust_domain: str) -> SpiffeId:
    """The identity of `pod` (a Pod document) as vouched for by the agent of `node`."""
    if pod is None:
        raise NotAuthorized(f"pod {pod_ref} does not exist")
    scheduled_on = (pod.get("spec") or {}).get("nodeName")
    if scheduled_on != node:
        raise NotAuthorized(
            f"agent of node {node!r} may not act for pod {pod_ref}, which runs on {scheduled_on!r}"
        )
    metadata = pod.get("metadata") or {}
    service_account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    namespace = metadata.get("namespace") or "default"
    if namespace == SYSTEM_NAMESPACE:
        raise NotAuthorized(f"pod {pod_ref}: namespace {SYSTEM_NAMESPACE} holds Tulle's own identities, "
                            "which no pod may obtain")
    try:
        return SpiffeId(trust_domain, namespace, service_account)
    except InvalidSpiffeId as error:
        raise NotAuthorized(f"pod {pod_ref} has no valid identity: {error}") from None
