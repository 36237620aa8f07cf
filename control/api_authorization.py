"""Who may do what on the config API (`tulle.config.v1.Config`), by caller
(`control.caller`). Pure: the service asks, with the stored object where one matters.

| caller                       | may                                                      |
|------------------------------|----------------------------------------------------------|
| LOCAL, INSECURE, OPERATOR,   | everything                                               |
| CONTROL_PLANE                |                                                          |
| AGENT of node N              | Status; Get its own Node, and existing Pods not bound to |
|                              | another node; Apply its own Node (status, labels,        |
|                              | annotations — never the spec the control plane owns) and |
|                              | Pods: bind an unbound or own pod to N (spec.nodeName)    |
|                              | and set its status, nothing else (NodeRestriction)       |
| WORKLOAD, STRANGER           | nothing                                                  |

An agent's Pod apply must carry the resourceVersion it read: the comparison with the
stored object is then exactly what the store commits against (no window between check
and write). Refusals travel as PERMISSION_DENIED with the reason. An agent's Get of an
object it may not read and of one that does not exist are refused alike (`may_get`), as
Kubernetes' node authorizer does: NOT_FOUND would tell it which of another node's objects
exist.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from control.caller import Caller, Role

UNRESTRICTED = (Role.LOCAL, Role.INSECURE, Role.OPERATOR, Role.CONTROL_PLANE)
AGENT_METHODS = ("Status", "Get", "Apply")
AGENT_KINDS = ("Node", "Pod")


def may_call(caller: Caller, method: str) -> str | None:
    if caller.role in UNRESTRICTED:
        return None
    if caller.role is Role.AGENT:
        if method in AGENT_METHODS:
            return None
        return f"agent of node {caller.name!r} may not {method} (only {', '.join(AGENT_METHODS)})"
    return f"client {caller} may not use the config API (needs an operator certificate)"


def may_get(caller: Caller, kind: str, namespace: str, name: str, stored: Mapping[str, Any] | None) -> str | None:
    """Get of `kind` `namespace`/`name`; `stored`: the object, None when there is none.

    An agent gets the same refusal for an object it may not read and for one that does not
    exist, so it cannot learn which of another node's objects exist (Kubernetes' node
    authorizer: "no relationship found between node and this object" for both). Only its
    own Node is decided by name alone, so it may read it before registering (NOT_FOUND).
    Namespaces are no secret to an agent (ADS sends it all of them, for namespaceSelectors);
    it reads one when a pod's arrives before that Namespace's update (injection labels)."""
    if caller.role in UNRESTRICTED:
        return None
    ref = f"{namespace}/{name}" if namespace else name
    if caller.role is not Role.AGENT:
        return f"client {caller} may not read {kind} {ref}"
    if kind == "Node" and name == caller.name:
        return None
    if kind == "Namespace":   # every agent receives every Namespace over ADS (policy selectors)
        return None
    if kind == "Pod" and stored is not None and _node_of(stored) in ("", caller.name):
        return None
    return (f"agent of node {caller.name!r} may not read {kind} {ref}: "
            f"no relationship found between node {caller.name!r} and this object")


def may_apply(caller: Caller, doc: Mapping[str, Any], stored: Mapping[str, Any] | None) -> str | None:
    """`doc`: one document as applied; `stored`: the object it would replace (None: new)."""
    if caller.role in UNRESTRICTED:
        return None
    kind = str(doc.get("kind") or "")
    if caller.role is not Role.AGENT or kind not in AGENT_KINDS:
        return f"client {caller} may not apply {kind or 'objects'} {_ref(doc)}"
    node = caller.name
    if kind == "Node":
        if _name(doc) != node:
            return f"agent of node {node!r} may not apply Node {_name(doc)!r}"
        if (doc.get("spec") or {}) != ((stored or {}).get("spec") or {}):
            return f"agent of node {node!r} may not change Node {node}'s spec (the control plane owns it)"
        return None
    if stored is None:
        return f"agent of node {node!r} may not create Pod {_ref(doc)} (it only binds and reports pods)"
    if _node_of(stored) not in ("", node):
        return f"agent of node {node!r} may not act for Pod {_ref(doc)}, which runs on {_node_of(stored)!r}"
    if _node_of(doc) not in ("", node):
        return f"agent of node {node!r} may not bind Pod {_ref(doc)} to node {_node_of(doc)!r}"
    version = (doc.get("metadata") or {}).get("resourceVersion")
    if version != (stored.get("metadata") or {}).get("resourceVersion"):
        return f"agent of node {node!r}: Pod {_ref(doc)} must carry the resourceVersion it read"
    if _beyond_binding(doc) != _beyond_binding(stored):
        return f"agent of node {node!r} may change only spec.nodeName and status of Pod {_ref(doc)}"
    return None


def _beyond_binding(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What an agent may not touch: the pod without status and spec.nodeName."""
    out = {k: copy.deepcopy(v) for k, v in pod.items() if k != "status"}
    spec = dict(out.get("spec") or {})
    spec.pop("nodeName", None)
    out["spec"] = spec
    return out


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _node_of(pod: Mapping[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def _ref(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    return f"{namespace}/{meta.get('name') or ''}" if namespace else str(meta.get("name") or "")
