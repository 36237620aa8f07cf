"""tulle-agent's ADS client against tulle-control's ADS server (in process, no kernel):
what it applies it ACKs, what it cannot use it NACKs with the error, keeping the last good
state; the first response of a stream replaces what an earlier stream left."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from control.xds.node_identity import NodeIdentity
from control.xds.resources import TULLE_NETWORK_POLICY, Resource
from netpolicy.agent.control_link import AdsClient
from netpolicy.agent.node_policy import NodePolicy
from netpolicy.enforcer import NodeEnforcer
from proto.tulle.netpolicy.v1 import network_policy_pb2
from tests.xds.harness import ControlPlane

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0/24"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "resourceVersion": "3"}}


def policy(name: str, spec: dict[str, Any], rv: str = "7") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x", "resourceVersion": rv}, "spec": spec}


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


def np_status(control: ControlPlane) -> Any:
    [status] = control.call(control.server.status)
    return next(t for t in status.types if t.type_url == TULLE_NETWORK_POLICY)


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
