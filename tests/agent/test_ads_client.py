"""tulle-agent's ADS client against tulle-control's ADS server (in process, no kernel):
what it applies it ACKs, what it cannot use it NACKs with the error, keeping the last good
state; the first response of a stream replaces what an earlier stream left."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from control.meshctl import enforcement
from control.xds.node_identity import NodeIdentity
from control.xds.resources import TULLE_ADMIN_NETWORK_POLICY, TULLE_NETWORK_POLICY, Resource
from netpolicy.agent.control_link import AdsClient
from netpolicy.agent.node_policy import NodePolicy
from netpolicy.enforcer import NodeEnforcer
from proto.tulle.netpolicy.v1 import admin_network_policy_pb2, network_policy_pb2
from tests.xds.harness import ControlPlane

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0/24"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "resourceVersion": "3"}}


def policy(name: str, spec: dict[str, Any], rv: str = "7") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x", "resourceVersion": rv}, "spec": spec}


def admin_policy(name: str, spec: dict[str, Any], rv: str = "7", baseline: bool = False) -> dict[str, Any]:
    kind = "BaselineAdminNetworkPolicy" if baseline else "AdminNetworkPolicy"
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "resourceVersion": rv}, "spec": spec}


DENY_ALL_INGRESS = {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}


class RecordingApplier:
    """Stands in for NftApplier: records each transaction (the kernel is tested elsewhere)."""

    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []

    def apply(self, document: dict[str, Any]) -> None:
        self.documents.append(document)


class NoControlApi:
    def get(self, *args: Any) -> None:
        raise AssertionError("the view has everything; no API read expected")


class NoReports:
    def report(self, *args: Any) -> None:
        pass


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
    return result


@pytest.fixture
def control() -> Iterator[ControlPlane]:
    cp = ControlPlane()
    cp.apply(NODE, NAMESPACE)
    cp.call(cp.server.push_now)
    try:
        yield cp
    finally:
        cp.close()


@pytest.fixture
def agent(control: ControlPlane) -> Iterator[tuple[NodePolicy, RecordingApplier]]:
    applier = RecordingApplier()
    node_lists: list[Any] = []
    policy_ = NodePolicy("node-1", NodeEnforcer("node-1", applier), NoControlApi(), NoReports(),  # type: ignore[arg-type]
                         node_lists.append)
    client = AdsClient(f"127.0.0.1:{control.port}", "node-1", ipaddress.IPv4Address("192.168.50.1"),
                       lambda *args: policy_.on_resources(*args))
    client.start()
    try:
        assert policy_.started.wait(10)
        yield policy_, applier
    finally:
        client.close()


def np_status(control: ControlPlane, type_url: str = TULLE_NETWORK_POLICY) -> Any:
    [status] = control.call(control.server.status)
    return next(t for t in status.types if t.type_url == type_url)


def test_agent_acks_a_policy_once_it_is_compiled_and_applied(control: ControlPlane, agent: Any) -> None:
    node_policy, applier = agent
    before = len(applier.documents)
    control.apply(policy("deny", {"podSelector": {}}))
    eventually(lambda: "x/deny" in node_policy.view.policies)
    status = eventually(lambda: (t := np_status(control)).acked_version and not t.pending and t)
    assert status.last_nack is None
    assert len(applier.documents) > before  # a transaction went to the kernel


def test_agent_nacks_a_policy_it_cannot_use_with_the_field_and_keeps_the_last_good_state(
        control: ControlPlane, agent: Any) -> None:
    node_policy, applier = agent
    control.apply(policy("good", {"podSelector": {}}))
    eventually(lambda: "x/good" in node_policy.view.policies)
    before = len(applier.documents)

    def smuggle_bad_policy(node: NodeIdentity, resources: list[Resource]) -> list[Resource]:
        # The config API would refuse this; the agent must not trust that it did.
        bad = network_policy_pb2.NetworkPolicy(name="bad", namespace="x", resource_version="9", spec_json=json.dumps(
            {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}))
        return [*resources, Resource("x/bad", bad)]

    control.server.override = smuggle_bad_policy
    control.call(control.server.push_now)
    nack = eventually(lambda: np_status(control).last_nack)
    assert "spec.ingress[0].ports[0].port" in nack.message
    assert set(node_policy.view.policies) == {"x/good"}
    assert len(applier.documents) == before  # nothing of the bad push reached the kernel


def test_agent_enforces_admin_and_baseline_policies_and_acks_their_resource_versions(
        control: ControlPlane, agent: Any) -> None:
    node_policy, applier = agent
    before = len(applier.documents)
    control.apply(admin_policy("deny-all", {"priority": 1, **DENY_ALL_INGRESS}, rv="11"),
                  admin_policy("default", DENY_ALL_INGRESS, rv="12", baseline=True))
    eventually(lambda: {"deny-all", "baseline/default"} <= set(node_policy.view.admin_policies))
    kinds = {key[0] for key in node_policy.view.state().policies}
    assert kinds == {"AdminNetworkPolicy", "BaselineAdminNetworkPolicy"}
    assert len(applier.documents) > before  # compiled and sent to the kernel
    held = eventually(lambda: (h := enforcement.read(f"127.0.0.1:{control.port}")).held.get(
        ("BaselineAdminNetworkPolicy", "default")) and h)
    assert held.nodes_enforcing("AdminNetworkPolicy", "deny-all", "11") == ["node-1"]
    assert held.nodes_enforcing("BaselineAdminNetworkPolicy", "default", "12") == ["node-1"]


def test_agent_nacks_an_admin_policy_it_cannot_parse_and_keeps_the_last_good_rules(
        control: ControlPlane, agent: Any) -> None:
    node_policy, applier = agent
    control.apply(admin_policy("good", {"priority": 1, **DENY_ALL_INGRESS}))
    eventually(lambda: "good" in node_policy.view.admin_policies)
    eventually(lambda: (t := np_status(control, TULLE_ADMIN_NETWORK_POLICY)).acked_version and not t.pending)
    good, before = node_policy.view.admin_policies["good"], len(applier.documents)

    def smuggle_bad_policy(node: NodeIdentity, resources: list[Resource]) -> list[Resource]:
        # The config API would refuse this (Pass is not a baseline action); the agent
        # must not trust that it did.
        bad = admin_network_policy_pb2.AdminNetworkPolicy(name="default", resource_version="9", baseline=True,
                                                          spec_json=json.dumps({"subject": {"namespaces": {}}, "ingress": [
                                                              {"action": "Pass", "from": [{"namespaces": {}}]}]}))
        return [*resources, Resource("baseline/default", bad)]

    control.server.override = smuggle_bad_policy
    control.call(control.server.push_now)
    nack = eventually(lambda: np_status(control, TULLE_ADMIN_NETWORK_POLICY).last_nack)
    assert "BaselineAdminNetworkPolicy default" in nack.message and "spec.ingress[0].action" in nack.message
    assert node_policy.view.admin_policies == {"good": good}
    assert len(applier.documents) == before  # nothing of the bad push reached the kernel


def test_a_deleted_policy_is_held_until_the_node_acks_its_removal(control: ControlPlane) -> None:
    gate = threading.Event()
    gate.set()
    enforcer = NodeEnforcer("node-1", RecordingApplier())  # type: ignore[arg-type]
    policy_ = NodePolicy("node-1", enforcer, NoControlApi(), NoReports(), lambda nodes: None)  # type: ignore[arg-type]

    def slow_node(*args: Any) -> str | None:
        assert gate.wait(10)
        return policy_.on_resources(*args)

    client = AdsClient(f"127.0.0.1:{control.port}", "node-1", ipaddress.IPv4Address("192.168.50.1"), slow_node)
    client.start()
    address = f"127.0.0.1:{control.port}"
    try:
        control.apply(admin_policy("default", DENY_ALL_INGRESS, baseline=True))
        eventually(lambda: enforcement.read(address).nodes_enforcing("BaselineAdminNetworkPolicy", "default", "7"))
        gate.clear()  # the node now takes its time to apply the next push
        control.call(control.server.delete, "BaselineAdminNetworkPolicy", "", "default")
        eventually(lambda: not control.call(control.server.proxy_config, "agent~192.168.50.1~node-1~cluster.local",
                                            TULLE_ADMIN_NETWORK_POLICY))
        held = enforcement.read(address)
        assert held.held[("BaselineAdminNetworkPolicy", "default")] == {"node-1": enforcement.REMOVING}
        assert not held.all_hold({("BaselineAdminNetworkPolicy", "default"): None})
        gate.set()
        eventually(lambda: enforcement.read(address).all_hold({("BaselineAdminNetworkPolicy", "default"): None}))
        assert "baseline/default" not in policy_.view.admin_policies
    finally:
        gate.set()
        client.close()
