"""Parsing policy documents: defaulting, and the bad-input table (every rejection names
the offending field's path)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from netpolicy.model import (
    Action,
    AdminNetworkPolicy,
    Direction,
    IPBlock,
    NamedPort,
    NetworkPolicy,
    PolicyError,
    PortRange,
    Protocol,
    parse_policy,
)


def np(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": spec}


def anp(spec: dict[str, Any], kind: str = "AdminNetworkPolicy", name: str = "a") -> dict[str, Any]:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


SUBJECT: dict[str, Any] = {"namespaces": {}}


def parsed_np(spec: dict[str, Any]) -> NetworkPolicy:
    policy = parse_policy(np(spec))
    assert isinstance(policy, NetworkPolicy)
    return policy


def test_policy_types_default_to_ingress_only_without_egress_rules() -> None:
    assert parsed_np({"podSelector": {}}).policy_types == {Direction.INGRESS}
    assert parsed_np({"podSelector": {}, "egress": []}).policy_types == {Direction.INGRESS}


def test_policy_types_default_adds_egress_when_an_egress_rule_exists() -> None:
    assert parsed_np({"podSelector": {}, "egress": [{}]}).policy_types == {Direction.INGRESS, Direction.EGRESS}


def test_explicit_policy_types_are_kept() -> None:
    assert parsed_np({"podSelector": {}, "policyTypes": ["Egress"]}).policy_types == {Direction.EGRESS}


def test_empty_rule_matches_every_peer_and_port() -> None:
    (rule,) = parsed_np({"podSelector": {}, "ingress": [{}]}).ingress
    assert rule.peers is None and rule.ports is None


def test_ports_number_range_named_and_protocol_only() -> None:
    (rule,) = parsed_np({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"port": 1000, "endPort": 2000, "protocol": "UDP"}, {"port": "web"}, {"protocol": "SCTP"},
    ]}]}).ingress
    assert rule.ports == (
        PortRange(Protocol.TCP, 80, 80), PortRange(Protocol.UDP, 1000, 2000),
        NamedPort("web", Protocol.TCP), PortRange(Protocol.SCTP, 1, 65535),
    )


def test_ip_block_with_except() -> None:
    (rule,) = parsed_np({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}).ingress
    assert rule.peers is not None
    (block,) = rule.peers
    assert isinstance(block, IPBlock)
    assert [str(e) for e in block.exceptions] == ["10.1.0.0/16"]


def test_admin_policy_rules_keep_order_and_actions() -> None:
    policy = parse_policy(anp({"priority": 5, "subject": SUBJECT, "ingress": [
        {"name": "one", "action": "Pass", "from": [{"namespaces": {}}]},
        {"name": "two", "action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
         "ports": [{"namedPort": "dns"}, {"portRange": {"protocol": "UDP", "start": 1, "end": 9}}]},
    ]}))
    assert isinstance(policy, AdminNetworkPolicy)
    assert [(r.name, r.action) for r in policy.ingress] == [("one", Action.PASS), ("two", Action.DENY)]
    assert policy.ingress[1].ports == (NamedPort("dns", None), PortRange(Protocol.UDP, 1, 9))


BAD_INPUT = [
    ("bad CIDR", np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.300/8"}}]}]}),
     "spec.ingress[0].from[0].ipBlock.cidr"),
    ("except outside cidr", np({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
     "spec.egress[0].to[0].ipBlock.except[0]"),
    ("except equal to cidr", np({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]}),
     "spec.egress[0].to[0].ipBlock.except[0]"),
    ("port 0", np({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}), "spec.ingress[0].ports[0].port"),
    ("port above 65535", np({"podSelector": {}, "ingress": [{"ports": [{"port": 65536}]}]}), "spec.ingress[0].ports[0].port"),
    ("endPort below port", np({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
     "spec.ingress[0].ports[0].endPort"),
    ("endPort with a named port", np({"podSelector": {}, "ingress": [{"ports": [{"port": "web", "endPort": 80}]}]}),
     "spec.ingress[0].ports[0].endPort"),
    ("unknown spec field", np({"podSelector": {}, "ingres": []}), "spec.ingres"),
    ("unknown peer field", np({"podSelector": {}, "ingress": [{"from": [{"podselector": {}}]}]}), "spec.ingress[0].from[0].podselector"),
    ("unknown top-level field", {**np({"podSelector": {}}), "extra": 1}, "extra"),
    ("missing podSelector", np({}), "spec.podSelector"),
    ("bad protocol", np({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}), "spec.ingress[0].ports[0].protocol"),
    ("bad policyType", np({"podSelector": {}, "policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
    ("ipBlock with a selector", np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
     "spec.ingress[0].from[0]"),
    ("bad selector operator", np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
     "spec.podSelector.matchExpressions[0].operator"),
    ("bad label value", np({"podSelector": {"matchLabels": {"a": "not ok!"}}}), "spec.podSelector.matchLabels.a"),
    ("ANP priority out of range", anp({"priority": 1001, "subject": SUBJECT}), "spec.priority"),
    ("ANP bad action", anp({"priority": 1, "subject": SUBJECT, "ingress": [{"action": "Maybe", "from": [{"namespaces": {}}]}]}),
     "spec.ingress[0].action"),
    ("BANP with Pass", anp({"subject": SUBJECT, "egress": [{"action": "Pass", "to": [{"namespaces": {}}]}]},
                           "BaselineAdminNetworkPolicy", "default"), "spec.egress[0].action"),
    ("BANP not named default", anp({"subject": SUBJECT}, "BaselineAdminNetworkPolicy", "other"), "metadata.name"),
    ("ANP networks in ingress", anp({"priority": 1, "subject": SUBJECT, "ingress": [{"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}]}),
     "spec.ingress[0].from[0].networks"),
    ("ANP portRange reversed", anp({"priority": 1, "subject": SUBJECT, "egress": [{"action": "Deny", "to": [{"namespaces": {}}],
                                   "ports": [{"portRange": {"protocol": "TCP", "start": 9, "end": 1}}]}]}),
     "spec.egress[0].ports[0].portRange.end"),
    ("wrong apiVersion", {**np({"podSelector": {}}), "apiVersion": "v1"}, "apiVersion"),
]


@pytest.mark.parametrize(("doc", "path"), [(d, p) for _, d, p in BAD_INPUT], ids=[n for n, _, _ in BAD_INPUT])
def test_bad_input_is_rejected_with_the_field_path(doc: dict[str, Any], path: str) -> None:
    before = copy.deepcopy(doc)
    with pytest.raises(PolicyError) as error:
        parse_policy(doc)
    assert error.value.path == path, str(error.value)
    assert doc == before  # parsing never mutates the caller's document
