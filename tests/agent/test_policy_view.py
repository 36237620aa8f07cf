"""The agent's view of the cluster from ADS responses and its own attachments (sans-IO)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from netpolicy.agent.policy_view import (
    ADMIN_NETWORK_POLICY,
    NAMESPACE,
    NETWORK_POLICY,
    POD,
    LocalPod,
    PolicyView,
    ViewError,
)
from netpolicy.model import Action, AdminNetworkPolicy
from proto.tulle.netpolicy.v1 import (
    admin_network_policy_pb2,
    namespace_pb2,
    network_policy_pb2,
    pod_pb2,
)


def pod(ns: str, name: str, ip: str, node: str, **labels: str) -> pod_pb2.Pod:
    return pod_pb2.Pod(namespace=ns, name=name, ip=ip, node_name=node, labels=labels)


def deny_all(ns: str, name: str = "deny") -> network_policy_pb2.NetworkPolicy:
    return network_policy_pb2.NetworkPolicy(name=name, namespace=ns, spec_json=json.dumps({"podSelector": {}}))


def admin(name: str, spec: object, baseline: bool = False, rv: str = "1") -> admin_network_policy_pb2.AdminNetworkPolicy:
    return admin_network_policy_pb2.AdminNetworkPolicy(name=name, spec_json=json.dumps(spec), resource_version=rv,
                                                       baseline=baseline)


DENY_FROM_Y = {"priority": 5, "subject": {"namespaces": {}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "b"}}}]}]}
BASELINE_DENY = {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}


def ready_view() -> PolicyView:
    view = PolicyView("node-1")
    view = view.apply_response(NAMESPACE, {"x": namespace_pb2.Namespace(name="x", labels={"team": "a"})}, [])
    view = view.apply_response(POD, {}, [])
    view = view.apply_response(ADMIN_NETWORK_POLICY, {}, [])
    return view.apply_response(NETWORK_POLICY, {}, [])


def test_view_is_ready_once_namespaces_pods_and_both_policy_types_each_arrived() -> None:
    view = PolicyView("node-1").apply_response(NAMESPACE, {}, []).apply_response(POD, {}, [])
    view = view.apply_response(NETWORK_POLICY, {}, [])
    assert not view.ready
    assert view.apply_response(ADMIN_NETWORK_POLICY, {}, []).ready


def test_admin_and_baseline_policies_are_in_the_state_beside_network_policies() -> None:
    view = ready_view().apply_response(NETWORK_POLICY, {"baseline/default": deny_all("baseline", "default")}, [])
    view = view.apply_response(ADMIN_NETWORK_POLICY, {
        "deny-y": admin("deny-y", DENY_FROM_Y),
        "baseline/default": admin("default", BASELINE_DENY, baseline=True),
    }, [])
    policies = view.state().policies
    assert set(policies) == {("NetworkPolicy", "baseline", "default"), ("AdminNetworkPolicy", None, "deny-y"),
                             ("BaselineAdminNetworkPolicy", None, "default")}
    anp = policies[("AdminNetworkPolicy", None, "deny-y")]
    assert isinstance(anp, AdminNetworkPolicy) and anp.priority == 5 and anp.ingress[0].action is Action.DENY
    assert view.apply_response(ADMIN_NETWORK_POLICY, {}, ["baseline/default"]).state().policies.keys() == {
        ("NetworkPolicy", "baseline", "default"), ("AdminNetworkPolicy", None, "deny-y")}


def test_an_admin_policy_the_model_rejects_is_an_error_naming_the_field_and_changes_nothing() -> None:
    view = ready_view().apply_response(ADMIN_NETWORK_POLICY, {"deny-y": admin("deny-y", DENY_FROM_Y)}, [])
    bad = admin("deny-y", {**DENY_FROM_Y, "priority": 1001}, rv="2")
    with pytest.raises(ViewError, match=r"AdminNetworkPolicy deny-y.*spec\.priority"):
        view.apply_response(ADMIN_NETWORK_POLICY, {"deny-y": bad}, [])
    assert view.admin_policies["deny-y"].priority == 5


def test_an_admin_policy_whose_spec_is_not_json_is_an_error() -> None:
    bad = admin_network_policy_pb2.AdminNetworkPolicy(name="default", spec_json="{", baseline=True)
    with pytest.raises(ViewError, match="BaselineAdminNetworkPolicy baseline/default: spec_json is not JSON"):
        ready_view().apply_response(ADMIN_NETWORK_POLICY, {"baseline/default": bad}, [])


def test_a_policy_the_model_rejects_is_an_error_naming_the_field_and_changes_nothing() -> None:
    view = ready_view()
    bad = network_policy_pb2.NetworkPolicy(name="bad", namespace="x", spec_json=json.dumps(
        {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}))
    with pytest.raises(ViewError, match=r"spec\.ingress\[0\]\.ports\[0\]\.port"):
        view.apply_response(NETWORK_POLICY, {"x/bad": bad}, [])
    assert view.policies == {}


def test_removed_resources_leave_the_state() -> None:
    view = ready_view().apply_response(NETWORK_POLICY, {"x/deny": deny_all("x")}, [])
    assert len(view.state().policies) == 1
    assert view.apply_response(NETWORK_POLICY, {}, ["x/deny"]).state().policies == {}


def test_local_pods_are_in_the_state_through_their_attachments_with_their_labels() -> None:
    view = ready_view().apply_response(POD, {"x/a": pod("x", "a", "", "node-1", app="a")}, [])
    assert view.state().pods == {}  # known, but not attached here
    view = view.with_local(LocalPod("x", "a", ipaddress.IPv4Address("10.244.1.5")))
    [a] = view.state().pods.values()
    assert (str(a.ip), a.node, dict(a.labels)) == ("10.244.1.5", "node-1", {"app": "a"})


def test_a_local_attachment_wins_an_address_over_a_stale_remote_pod() -> None:
    view = ready_view().apply_response(POD, {
        "x/old": pod("x", "old", "10.244.1.5", "node-2"),
        "x/new": pod("x", "new", "", "node-1", app="new"),
    }, [])
    view = view.with_local(LocalPod("x", "new", ipaddress.IPv4Address("10.244.1.5")))
    assert [p.name for p in view.state().pods.values()] == ["new"]


def test_a_pod_whose_namespace_has_not_arrived_gets_its_name_label() -> None:
    view = ready_view().apply_response(POD, {"y/b": pod("y", "b", "10.244.2.5", "node-2")}, [])
    assert view.state().namespaces["y"].labels == {"kubernetes.io/metadata.name": "y"}
