"""Evaluator semantics the corpus exercises only lightly, and `explain`."""

from __future__ import annotations

import ipaddress
from typing import Any

from netpolicy.cluster import ClusterState, ContainerPort, Namespace, Pod
from netpolicy.evaluate import Tier, Verdict, evaluate, explain
from netpolicy.model import Protocol, parse_policy

TCP, UDP = Protocol.TCP, Protocol.UDP


def pod(ns: str, name: str, ip: str, labels: dict[str, str] | None = None, ports: tuple[ContainerPort, ...] = ()) -> Pod:
    return Pod(ns, name, labels or {}, ipaddress.IPv4Address(ip), "n1", ports)


A = pod("x", "a", "10.0.0.1", {"app": "a"})
B = pod("x", "b", "10.0.0.2", {"app": "b", "tier": "db"}, (ContainerPort(5432, TCP, "pg"), ContainerPort(53, UDP, "dns")))
C = pod("y", "c", "10.0.1.1", {})
BASE = ClusterState.build([Namespace.create("x"), Namespace.create("y", {"team": "y"})], [A, B, C])


def np(spec: dict[str, Any], name: str = "p", ns: str = "x") -> Any:
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


def test_no_policy_allows_everything() -> None:
    assert evaluate(BASE, A, B, 80, TCP) is Verdict.ALLOW


def test_not_in_matches_pods_without_the_key() -> None:
    state = BASE.with_policy(np({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
                                 "ingress": []}))
    assert evaluate(state, B, A, 80, TCP) is Verdict.DENY  # a has no tier label: selected
    assert evaluate(state, A, B, 80, TCP) is Verdict.ALLOW  # b is tier=db: not selected


def test_named_port_needs_the_rules_protocol() -> None:
    state = BASE.with_policy(np({"podSelector": {"matchLabels": {"app": "b"}},
                                 "ingress": [{"ports": [{"port": "dns", "protocol": "TCP"}]}]}))
    assert evaluate(state, A, B, 53, UDP) is Verdict.DENY
    state = state.with_policy(np({"podSelector": {"matchLabels": {"app": "b"}},
                                  "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}))
    assert evaluate(state, A, B, 53, UDP) is Verdict.ALLOW


def test_ip_block_except_does_not_remove_another_peers_allow() -> None:
    state = BASE.with_policy(np({"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.1/32"]}},
        {"podSelector": {"matchLabels": {"app": "a"}}},
    ]}]}))
    assert evaluate(state, A, B, 80, TCP) is Verdict.ALLOW


def test_egress_policy_types_without_rules_isolates_egress() -> None:
    state = BASE.with_policy(np({"podSelector": {}, "policyTypes": ["Egress"]}))
    assert evaluate(state, A, C, 80, TCP) is Verdict.DENY
    assert evaluate(state, C, A, 80, TCP) is Verdict.ALLOW


def test_outside_address_is_governed_by_ip_blocks_only() -> None:
    outside = ipaddress.IPv4Address("192.0.2.7")
    state = BASE.with_policy(np({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}))
    assert evaluate(state, A, outside, 443, TCP) is Verdict.ALLOW
    assert evaluate(state, A, C, 443, TCP) is Verdict.DENY


def test_explain_names_the_deciding_policy_and_rule() -> None:
    state = BASE.with_policy(np({"podSelector": {"matchLabels": {"app": "b"}},
                                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}, name="allow-a"))
    allowed = explain(state, A, B, 80, TCP)
    assert allowed.verdict is Verdict.ALLOW
    assert allowed.ingress.tier is Tier.NETWORK_POLICY and allowed.ingress.rule is not None
    assert str(allowed.ingress) == "ingress: allow (NetworkPolicy by NetworkPolicy x/allow-a rule ingress[0])"
    assert [str(p) for p in allowed.ingress_policies] == ["NetworkPolicy x/allow-a"]
    denied = explain(state, C, B, 80, TCP)
    assert denied.verdict is Verdict.DENY and denied.deciding.direction.value == "Ingress"
    assert "isolated by allow-a" in denied.deciding.reason


def test_explain_renders_both_sides_and_the_deciding_rule() -> None:
    state = BASE.with_policy(np({"podSelector": {"matchLabels": {"app": "b"}},
                                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}, name="allow-a"))
    text = explain(state, C, B, 80, TCP).render(C, B, 80, TCP)
    assert text.splitlines() == [
        "y/c -> x/b TCP/80: DENY",
        "  source y/c (egress): selected by none",
        "    allow at tier default (no policy decides)",
        "  destination x/b (ingress): selected by NetworkPolicy x/allow-a",
        "    deny at tier NetworkPolicy, NetworkPolicy x/allow-a (isolated by allow-a; no rule matches)",
        "  decided by the ingress side",
    ]


def test_explain_shows_an_admin_pass_handing_over_to_network_policy() -> None:
    anp = parse_policy({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                        "metadata": {"name": "pass-y"}, "spec": {"priority": 1, "subject": {"namespaces": {}},
                        "ingress": [{"name": "pass-from-y", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": "y"}}}]}]}})
    decision = explain(BASE.with_policy(anp), C, A, 80, TCP).ingress
    assert decision.verdict is Verdict.ALLOW and decision.tier is Tier.DEFAULT
    assert decision.reason == "passed by AdminNetworkPolicy pass-y rule pass-from-y; nothing else decides"
