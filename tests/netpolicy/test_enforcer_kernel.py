"""Incremental updates, fail-closed pod start, refused transactions and agent restart,
through the kernel: three pods of namespace x on one node's bridge."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from netpolicy.applier import NftApplier, NftError
from netpolicy.cluster import ClusterState, Pod
from netpolicy.conformance.corpus import Probe, initial_state, parse_topology
from netpolicy.conformance.direct import DirectTopology
from netpolicy.enforcer import NodeEnforcer
from netpolicy.model import Protocol, parse_policy
from netpolicy.ruleset import counters_by_rule
from tests.kernel import KernelResources

pytestmark = pytest.mark.privileged

TOPOLOGY = parse_topology({"namespaces": {"x": {"labels": {"kubernetes.io/metadata.name": "x"}, "pods": {
    name: {"labels": {"pod": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]} for name in "abc"
}}}}, "inline")

DENY_INGRESS_TO_C = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "deny-c", "namespace": "x"},
                     "spec": {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"]}}


@dataclass
class Node:
    loop: asyncio.AbstractEventLoop
    topology: DirectTopology
    full: ClusterState  # all three pods

    def without_c(self) -> ClusterState:
        return self.full.without_pod("x", "c")

    def connects(self, src: str, dst: str) -> bool:
        probe = Probe(("x", src), ("x", dst), Protocol.TCP, 80, "")
        return self.loop.run_until_complete(self.topology.probe(probe, 0.5))

    def enforcer(self) -> NodeEnforcer:
        assert self.topology.node_netns is not None
        return NodeEnforcer(self.topology.node, NftApplier(self.topology.node_netns))


@pytest.fixture
def node(kernel: KernelResources) -> Iterator[Node]:
    loop = asyncio.new_event_loop()
    topology = DirectTopology(kernel)
    placement = loop.run_until_complete(topology.bring_up(TOPOLOGY))
    try:
        yield Node(loop, topology, initial_state(TOPOLOGY, placement.ips, placement.nodes))
    finally:
        loop.run_until_complete(topology.tear_down_pods())
        loop.close()


def with_policy(state: ClusterState, doc: dict[str, Any]) -> ClusterState:
    return state.with_policy(parse_policy(doc))


def test_pod_added_is_one_element_transaction(node: Node) -> None:
    enforcer = node.enforcer()
    assert enforcer.start(with_policy(node.without_c(), DENY_INGRESS_TO_C)).full
    added = enforcer.add_pod(with_policy(node.full, DENY_INGRESS_TO_C), node.full.pods[("x", "c")])
    assert not added.full and 0 < added.elements <= 4
    assert not node.connects("a", "c")
    assert node.connects("c", "a")


def test_policy_change_is_applied_as_a_diff(node: Node) -> None:
    enforcer = node.enforcer()
    enforcer.start(node.full)
    assert node.connects("a", "c")
    change = enforcer.update(with_policy(node.full, DENY_INGRESS_TO_C))
    assert not change.full and change.commands <= 2
    assert not node.connects("a", "c") and node.connects("a", "b")
    enforcer.update(node.full)
    assert node.connects("a", "c")


def test_counters_name_the_policy_that_dropped_the_traffic(node: Node) -> None:
    enforcer = node.enforcer()
    enforcer.start(with_policy(node.full, DENY_INGRESS_TO_C))
    assert not node.connects("a", "c")
    counters = counters_by_rule(enforcer.applier.list_table())
    packets, _ = counters["isolated by NetworkPolicy x/deny-c"]
    assert packets >= 1  # the SYN (and its retransmissions, if any)


def test_held_pod_is_unreachable_until_its_rules_are_programmed(node: Node) -> None:
    enforcer = node.enforcer()
    enforcer.start(node.without_c())
    c: Pod = node.full.pods[("x", "c")]
    enforcer.hold(c.ip)
    assert not node.connects("a", "c") and not node.connects("c", "a")
    enforcer.add_pod(node.full, c)
    assert node.connects("a", "c") and node.connects("c", "a")


def test_held_pod_selected_by_a_policy_is_never_reachable(node: Node) -> None:
    enforcer = node.enforcer()
    enforcer.start(with_policy(node.without_c(), DENY_INGRESS_TO_C))
    c = node.full.pods[("x", "c")]
    enforcer.hold(c.ip)
    assert not node.connects("a", "c")
    enforcer.add_pod(with_policy(node.full, DENY_INGRESS_TO_C), c)
    assert not node.connects("a", "c")


def test_removed_pod_leaves_no_rules_behind(node: Node) -> None:
    enforcer = node.enforcer()
    enforcer.start(with_policy(node.full, DENY_INGRESS_TO_C))
    c = node.full.pods[("x", "c")]
    enforcer.remove_pod(with_policy(node.without_c(), DENY_INGRESS_TO_C), c)
    assert enforcer.ruleset is not None and int(c.ip) not in enforcer.ruleset.local_pods
    assert str(c.ip) not in str(enforcer.applier.list_table())


def test_refused_transaction_leaves_the_ruleset_in_force(node: Node) -> None:
    enforcer = node.enforcer()
    enforcer.start(with_policy(node.full, DENY_INGRESS_TO_C))
    bad = {"nftables": [
        {"delete": {"element": {"family": "inet", "table": "tulle", "name": "local_pods", "elem": ["10.244.0.10"]}}},
        {"delete": {"element": {"family": "inet", "table": "tulle", "name": "local_pods", "elem": ["192.0.2.1"]}}},
    ]}
    with pytest.raises(NftError):
        enforcer.applier.apply(bad)
    assert not node.connects("a", "c")
    assert "10.244.0.10" in str(enforcer.applier.list_table())


def test_agent_restart_keeps_rules_until_the_new_ruleset_replaces_them(node: Node) -> None:
    node.enforcer().start(with_policy(node.full, DENY_INGRESS_TO_C))
    restarted = node.enforcer()  # a new process: knows nothing of what is applied
    assert not node.connects("a", "c")
    restarted.start(node.full)
    assert node.connects("a", "c")
    restarted.update(with_policy(node.full, DENY_INGRESS_TO_C))
    assert not node.connects("a", "c")
