"""Hypothesis strategies: random clusters (labels) and policy documents over the 3x3
conformance topology, shaped like what users write."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
POD_LABELS = st.fixed_dictionaries({}, optional={"app": st.sampled_from(["a", "b", "c"]),
                                                 "tier": st.sampled_from(["web", "db"])})
NS_LABELS = st.fixed_dictionaries({}, optional={"team": st.sampled_from(["red", "blue"])})
CIDRS = ["10.244.0.0/16", "10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/23", "10.244.3.10/32",
         "10.244.0.10/32", "10.244.1.11/32", "10.0.0.0/8", "192.0.2.0/24"]


@st.composite
def selector(draw: st.DrawFn, keys: tuple[str, ...] = ("app", "tier")) -> dict[str, Any]:
    kind = draw(st.sampled_from(["empty", "labels", "expression"]))
    if kind == "empty":
        return {}
    key = draw(st.sampled_from(keys))
    values = {"app": ["a", "b", "c"], "tier": ["web", "db"], "team": ["red", "blue"],
              "kubernetes.io/metadata.name": list(NAMESPACES)}[key]
    if kind == "labels":
        return {"matchLabels": {key: draw(st.sampled_from(values))}}
    op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
    expr: dict[str, Any] = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True))
    return {"matchExpressions": [expr]}


NS_SELECTOR = selector(("team", "kubernetes.io/metadata.name"))


@st.composite
def np_peer(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["pod", "ns", "both", "ipblock"]))
    if kind == "pod":
        return {"podSelector": draw(selector())}
    if kind == "ns":
        return {"namespaceSelector": draw(NS_SELECTOR)}
    if kind == "both":
        return {"podSelector": draw(selector()), "namespaceSelector": draw(NS_SELECTOR)}
    cidr = draw(st.sampled_from(CIDRS[:5]))
    block: dict[str, Any] = {"cidr": cidr}
    if cidr == "10.244.0.0/16" and draw(st.booleans()):
        block["except"] = [draw(st.sampled_from(["10.244.0.0/24", "10.244.1.11/32", "10.244.2.0/23", "10.244.3.10/32"]))]
    return {"ipBlock": block}


@st.composite
def np_port(draw: st.DrawFn) -> dict[str, Any]:
    port: dict[str, Any] = {}
    protocol = draw(st.sampled_from(["TCP", "UDP", "SCTP", None]))
    if protocol:
        port["protocol"] = protocol
    kind = draw(st.sampled_from(["number", "range", "named", "none"]))
    if kind == "number":
        port["port"] = draw(st.sampled_from([80, 81, 82]))
    elif kind == "range":
        port["port"] = draw(st.sampled_from([79, 80, 81]))
        port["endPort"] = port["port"] + draw(st.integers(0, 1))
    elif kind == "named":
        port["port"] = draw(st.sampled_from(["serve-80-tcp", "serve-81-udp", "serve-80-udp", "serve-81-tcp"]))
    return port


@st.composite
def np_rule(draw: st.DrawFn, peer_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule[peer_key] = draw(st.lists(np_peer(), min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(np_port(), min_size=1, max_size=2))
    return rule


@st.composite
def network_policy(draw: st.DrawFn, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(selector())}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(np_rule("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(np_rule("to"), max_size=2))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(NAMESPACES))}, "spec": spec}


@st.composite
def admin_peer(draw: st.DrawFn, egress: bool) -> dict[str, Any]:
    kinds = ["namespaces", "pods"] + (["networks"] if egress else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "namespaces":
        return {"namespaces": draw(NS_SELECTOR)}
    if kind == "pods":
        return {"pods": {"namespaceSelector": draw(NS_SELECTOR), "podSelector": draw(selector())}}
    return {"networks": draw(st.lists(st.sampled_from(CIDRS), min_size=1, max_size=2, unique=True))}


@st.composite
def admin_port(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["portNumber", "namedPort", "portRange"]))
    protocol = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    if kind == "portNumber":
        return {"portNumber": {"protocol": protocol, "port": draw(st.sampled_from([80, 81]))}}
    if kind == "namedPort":
        return {"namedPort": draw(st.sampled_from(["serve-80-tcp", "serve-81-udp"]))}
    return {"portRange": {"protocol": protocol, "start": 79, "end": draw(st.sampled_from([80, 81]))}}


@st.composite
def admin_policy(draw: st.DrawFn, name: str, baseline: bool) -> dict[str, Any]:
    subject = draw(st.sampled_from(["namespaces", "pods"]))
    spec: dict[str, Any] = {"subject": {"namespaces": draw(NS_SELECTOR)} if subject == "namespaces" else
                            {"pods": {"namespaceSelector": draw(NS_SELECTOR), "podSelector": draw(selector())}}}
    if not baseline:
        spec["priority"] = draw(st.integers(0, 3))
    actions = ["Allow", "Deny"] + ([] if baseline else ["Pass"])
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        rules = []
        for i in range(draw(st.integers(0, 2))):
            rule: dict[str, Any] = {"name": f"{direction}-{i}", "action": draw(st.sampled_from(actions)),
                                    peer_key: draw(st.lists(admin_peer(direction == "egress"), min_size=1, max_size=2))}
            if draw(st.booleans()):
                rule["ports"] = draw(st.lists(admin_port(), min_size=1, max_size=2))
            rules.append(rule)
        if rules:
            spec[direction] = rules
    kind = "BaselineAdminNetworkPolicy" if baseline else "AdminNetworkPolicy"
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": kind,
            "metadata": {"name": "default" if baseline else name}, "spec": spec}


@st.composite
def policy_set(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs = [draw(network_policy(f"np-{i}")) for i in range(draw(st.integers(1, 4)))]
    docs += [draw(admin_policy(f"anp-{i}", baseline=False)) for i in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        docs.append(draw(admin_policy("default", baseline=True)))
    return docs
