"""The security section of `meshctl describe pod`: the pod's workload identity, whether
it has a sidecar, the mTLS mode in force per port (and which PeerAuthentication sets
it), and the AuthorizationPolicies that apply — computed with the same rules
tulle-control's xDS translation uses (control.xds.peer_authentication, .authorization).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from control.xds.authorization import applicable
from control.xds.mesh import AuthorizationPolicy, PeerAuthentication, Pod, read_document
from control.xds.peer_authentication import ROOT_NAMESPACE, mtls_mode

LABEL = 13


def security_lines(
    pod_doc: Mapping[str, Any], policy_docs: Iterable[Mapping[str, Any]], trust_domain: str = "cluster.local"
) -> list[str]:
    pod = read_document(pod_doc)
    assert isinstance(pod, Pod)
    objects = [read_document(d) for d in policy_docs]
    pas = tuple(o for o in objects if isinstance(o, PeerAuthentication))
    aps = tuple(o for o in objects if isinstance(o, AuthorizationPolicy))
    lines = [f"{'Identity:':<{LABEL}} spiffe://{trust_domain}/ns/{pod.namespace}/sa/{pod.service_account}",
             f"{'Sidecar:':<{LABEL}} {'yes' if pod.sidecar else 'no (peers reach it in plaintext)'}"]
    mode = mtls_mode(pas, pod.namespace, pod.labels, None)
    ports = [f"{p.port}: {mtls_mode(pas, pod.namespace, pod.labels, p.port).value}" for p in pod.ports]
    lines.append(f"{'mTLS:':<{LABEL}} {mode.value}" + (f" (ports {', '.join(ports)})" if ports else ""))
    policies = applicable(aps, pod.namespace, pod.labels)
    text = ", ".join(f"{p.action} {p.namespace}/{p.name}" for p in policies) or "<none> (all requests allowed)"
    lines.append(f"{'Authorization:':<{LABEL}} {text}")
    return lines


def policy_namespaces(namespace: str) -> tuple[str, ...]:
    """Where the policies that can apply to a pod of `namespace` live."""
    return (namespace,) if namespace == ROOT_NAMESPACE else (namespace, ROOT_NAMESPACE)
