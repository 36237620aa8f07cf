"""Who may read which node's config over xDS: the rule the mTLS port enforces.

On the mTLS port every client presents a certificate from Tulle's CA, whose SPIFFE ID
(grpc's `peer_spiffe_id`) must match the node it asks config for:
- a sidecar (or proxyless client) — Node id `sidecar~<ip>~<pod>.<ns>~…` — only with
  its workload certificate: the pod must exist, and the certificate's namespace and
  service account must be that pod's. So a proxy reads only the config of a pod it
  holds the identity of (the key it got from its node agent).
- a tulle-agent — `agent~<ip>~<node>~…` — only with the agent certificate of that node
  (`spiffe://<td>/ns/tulle-system/sa/tulle-agent.<node>`).
- CSDS (what meshctl proxy-status reads: every proxy's config) only with an identity of
  the `tulle-system` namespace.
The plaintext port (`--xds-listen`, off by default, for a lab's private underlay) and
the root-only unix socket carry no certificate and are trusted as they are.
"""

from __future__ import annotations

from control.ca.spiffe import SYSTEM_NAMESPACE, InvalidSpiffeId, SpiffeId, agent_identity
from control.xds.mesh import MeshSnapshot
from control.xds.node_identity import NodeIdentity, NodeKind


def may_read(node: NodeIdentity, peer: str, mesh: MeshSnapshot) -> str | None:
    """None when the client whose certificate says `peer` may read `node`'s config,
    else the reason it may not."""
    try:
        proven = SpiffeId.parse(peer)
    except InvalidSpiffeId:
        return f"client certificate {peer!r} carries no Tulle SPIFFE ID"
    if proven.trust_domain != mesh.trust_domain:
        return f"client {peer} is outside trust domain {mesh.trust_domain!r}"
    if node.kind is NodeKind.AGENT:
        expected = agent_identity(mesh.trust_domain, node.name)
        return None if proven == expected else f"client {peer} may not act for node {node.name!r} (needs {expected})"
    pod = mesh.pods.get(f"{node.namespace}/{node.name}")
    if pod is None:
        return f"client {peer} asks for pod {node.namespace}/{node.name}, which does not exist"
    if (pod.namespace, pod.service_account) != (proven.namespace, proven.service_account):
        return (f"client {peer} may not read the config of pod {pod.key} "
                f"(service account {pod.namespace}/{pod.service_account})")
    return None


def may_read_status(peer: str) -> str | None:
    try:
        if SpiffeId.parse(peer).namespace == SYSTEM_NAMESPACE:
            return None
    except InvalidSpiffeId:
        pass
    return f"client {peer!r} may not read every proxy's config (needs an identity in {SYSTEM_NAMESPACE})"
