"""Who may read which node's config over xDS: the rule tulle-control's ADS and CSDS
enforce on every channel, by its caller (`control.caller`).

- LOCAL (the root-only unix socket) and INSECURE (a plaintext `--xds-listen` or
  `--listen` port, opened on purpose) callers are trusted as they are.
- On an mTLS port the client certificate must match the node it asks config for:
  - a sidecar (or proxyless client) — Node id `sidecar~<ip>~<pod>.<ns>~…` — only with
    its workload certificate: the pod must exist, and the certificate's namespace and
    service account must be that pod's. So a proxy reads only the config of a pod it
    holds the identity of (the key it got from its node agent).
  - a tulle-agent — `agent~<ip>~<node>~…` — only with the agent certificate of that node
    (`spiffe://<td>/ns/tulle-system/sa/tulle-agent.<node>`).
  - nobody else opens an ADS stream: operators read config over CSDS.
- CSDS (what meshctl proxy-status / proxy-config read: every node's config) only with an
  operator's certificate (or another replica's).
A refused stream or call ends with PERMISSION_DENIED and says why.
"""

from __future__ import annotations

from control.ca.spiffe import agent_identity
from control.caller import Caller, Role
from control.xds.mesh import MeshSnapshot
from control.xds.node_identity import NodeIdentity, NodeKind


def may_read(node: NodeIdentity, caller: Caller, mesh: MeshSnapshot) -> str | None:
    """None when `caller` may read `node`'s config, else the reason it may not."""
    if caller.trusted:
        return None
    if node.kind is NodeKind.AGENT:
        if caller.role is Role.AGENT and caller.name == node.name:
            return None
        return f"client {caller} may not act for node {node.name!r} (needs {agent_identity(mesh.trust_domain, node.name)})"
    if caller.role is not Role.WORKLOAD or caller.identity is None:
        return f"client {caller} may not read a proxy's config (needs that pod's workload certificate)"
    pod = mesh.pods.get(f"{node.namespace}/{node.name}")
    if pod is None:
        return f"client {caller} asks for pod {node.namespace}/{node.name}, which does not exist"
    if (pod.namespace, pod.service_account) != (caller.identity.namespace, caller.identity.service_account):
        return (f"client {caller} may not read the config of pod {pod.key} "
                f"(service account {pod.namespace}/{pod.service_account})")
    return None


def may_read_status(caller: Caller) -> str | None:
    if caller.trusted or caller.role in (Role.OPERATOR, Role.CONTROL_PLANE):
        return None
    return f"client {caller} may not read every proxy's config (needs an operator certificate)"
