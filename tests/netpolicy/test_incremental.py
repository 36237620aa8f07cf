"""The incremental compiler (pod added or removed) produces exactly the ruleset a full
compilation of the new state produces."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.cluster import ClusterState, ContainerPort, Namespace, Pod
from netpolicy.compiler import NodeCompiler, compile_ruleset
from netpolicy.model import Protocol, parse_policy
from netpolicy.ruleset import diff_document
from tests.netpolicy.policy_strategies import NAMESPACES, NS_LABELS, POD_LABELS, policy_set

PORTS = (ContainerPort(80, Protocol.TCP, "serve-80-tcp"), ContainerPort(81, Protocol.UDP, "serve-81-udp"))
POD = st.tuples(st.sampled_from(NAMESPACES), POD_LABELS, st.sampled_from(["n1", "n2"]))


def cluster(ns_labels: dict[str, dict[str, str]], pods: list[Any], docs: list[dict[str, Any]]) -> ClusterState:
    return ClusterState.build(
        [Namespace.create(ns, labels) for ns, labels in ns_labels.items()],
        [Pod(ns, f"p{i}", labels, ipaddress.IPv4Address(f"10.244.0.{10 + i}"), node, PORTS)
         for i, (ns, labels, node) in enumerate(pods)],
        [parse_policy(d) for d in docs],
    )


@settings(max_examples=60, deadline=None)
@given(ns_labels=st.fixed_dictionaries({ns: NS_LABELS for ns in NAMESPACES}),
       pods=st.lists(POD, min_size=2, max_size=8), docs=policy_set())
def test_adding_then_removing_pods_matches_full_compilation(ns_labels: dict[str, dict[str, str]], pods: list[Any],
                                                           docs: list[dict[str, Any]]) -> None:
    full = cluster(ns_labels, pods, docs)
    last = list(full.pods.values())[-1]
    before = full.without_pod(last.namespace, last.name)
    compiler = NodeCompiler("n1")
    compiler.compile(before)
    added = compiler.add_pod(full, last)
    assert diff_document(added, compile_ruleset(full, "n1", added)) == {"nftables": []}
    removed = compiler.remove_pod(before, last)
    reference = compile_ruleset(before, "n1", removed)
    # Removal may leave the removed pod's class (and elements naming it) behind: a full
    # compilation only deletes those, it adds nothing.
    for command in diff_document(removed, reference)["nftables"]:
        assert set(command) == {"delete"}, command
