"""Who may do what on the config API (control.api_authorization): operators everything,
an agent only its own Node and binding pods to its node, workloads nothing."""

from __future__ import annotations

from typing import Any

import pytest

from control.api_authorization import may_apply, may_call, may_get
from control.ca.spiffe import SpiffeId
from control.caller import Caller, Role

AGENT = Caller(Role.AGENT, "node-a")
OPERATOR = Caller(Role.OPERATOR, "alice")
WORKLOAD = Caller(Role.WORKLOAD, identity=SpiffeId("cluster.local", "shop", "frontend"))


def node(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec or {},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}


def pod(node_name: str = "", version: str = "7", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": version},
            "spec": {"containers": [{"name": "a", "image": "a"}], **({"nodeName": node_name} if node_name else {}),
                     **spec},
            "status": {}}


@pytest.mark.parametrize("caller", [Caller(Role.LOCAL), Caller(Role.INSECURE), OPERATOR, Caller(Role.CONTROL_PLANE)])
def test_local_insecure_operator_and_replica_callers_may_do_everything(caller: Caller) -> None:
    for method in ("Apply", "Get", "List", "Delete", "Watch", "Status"):
        assert may_call(caller, method) is None
    assert may_apply(caller, pod("node-b"), pod("node-c")) is None
    assert may_get(caller, "Pod", "shop", "web-1", pod("node-b")) is None
    assert may_get(caller, "Pod", "shop", "web-1", None) is None  # the service then says NOT_FOUND


def test_workloads_may_not_use_the_config_api() -> None:
    assert "needs an operator certificate" in (may_call(WORKLOAD, "Get") or "")
    assert may_call(Caller(Role.STRANGER), "Status") is not None


def test_an_agent_may_only_get_apply_and_ask_status() -> None:
    assert [m for m in ("Apply", "Get", "List", "Delete", "Watch", "Status") if may_call(AGENT, m) is None] == [
        "Apply", "Get", "Status"]


def test_an_agent_reads_its_own_node_and_pods_not_bound_elsewhere() -> None:
    assert may_get(AGENT, "Node", "", "node-a", node("node-a")) is None
    assert may_get(AGENT, "Node", "", "node-b", node("node-b")) is not None
    assert may_get(AGENT, "Pod", "shop", "web-1", pod()) is None
    assert may_get(AGENT, "Pod", "shop", "web-1", pod("node-a")) is None
    assert may_get(AGENT, "Pod", "shop", "web-1", pod("node-b")) is not None
    assert may_get(AGENT, "NetworkPolicy", "shop", "x", {"metadata": {"name": "x"}}) is not None


def test_an_agent_reads_namespaces_as_it_receives_them_all_over_ads() -> None:
    assert may_get(AGENT, "Namespace", "", "shop", {"kind": "Namespace", "metadata": {"name": "shop"}}) is None
    assert may_get(AGENT, "Namespace", "", "absent", None) is None   # the service then says NOT_FOUND


def test_an_agent_may_look_for_its_own_node_before_registering_it() -> None:
    assert may_get(AGENT, "Node", "", "node-a", None) is None  # the service then says NOT_FOUND


@pytest.mark.parametrize(("kind", "namespace", "name", "stored"), [
    ("Pod", "shop", "web-1", pod("node-b")),
    ("Node", "", "node-b", node("node-b")),
    ("NetworkPolicy", "shop", "x", {"kind": "NetworkPolicy", "metadata": {"name": "x", "namespace": "shop"}}),
])
def test_an_agent_is_refused_alike_for_an_object_it_may_not_read_and_a_missing_one(
        kind: str, namespace: str, name: str, stored: dict[str, Any]) -> None:
    refused = may_get(AGENT, kind, namespace, name, stored)
    assert refused is not None and "no relationship found between node 'node-a'" in refused
    assert may_get(AGENT, kind, namespace, name, None) == refused


def test_an_agent_registers_its_own_node_but_not_another() -> None:
    assert may_apply(AGENT, node("node-a"), None) is None
    assert "may not apply Node 'node-b'" in (may_apply(AGENT, node("node-b"), None) or "")


def test_an_agent_may_not_set_its_nodes_spec() -> None:
    stored = node("node-a", {"podCIDR": "10.244.1.0/24"})
    assert may_apply(AGENT, node("node-a", {"podCIDR": "10.244.1.0/24"}), stored) is None
    assert "spec" in (may_apply(AGENT, node("node-a", {"podCIDR": "10.244.9.0/24"}), stored) or "")


def test_an_agent_binds_an_unbound_pod_to_its_node_and_sets_its_status() -> None:
    bound = pod("node-a")
    bound["status"] = {"podIP": "10.244.1.4"}
    assert may_apply(AGENT, bound, pod()) is None


def test_an_agent_may_not_bind_a_pod_elsewhere_or_take_one_bound_elsewhere() -> None:
    assert "to node 'node-b'" in (may_apply(AGENT, pod("node-b"), pod()) or "")
    assert "runs on 'node-b'" in (may_apply(AGENT, pod("node-a"), pod("node-b")) or "")


def test_an_agent_may_change_nothing_but_binding_and_status() -> None:
    assert "only spec.nodeName and status" in (may_apply(AGENT, pod("node-a", serviceAccountName="admin"),
                                                         pod("node-a")) or "")


def test_an_agents_pod_apply_must_carry_the_version_it_read() -> None:
    assert "resourceVersion" in (may_apply(AGENT, pod("node-a", version="6"), pod("node-a", version="7")) or "")


def test_an_agent_creates_no_pods_and_applies_no_other_kinds() -> None:
    assert "may not create Pod" in (may_apply(AGENT, pod("node-a"), None) or "")
    assert may_apply(AGENT, {"kind": "NetworkPolicy", "metadata": {"name": "x", "namespace": "shop"}}, None)
