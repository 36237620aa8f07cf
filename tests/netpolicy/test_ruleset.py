"""The compiled ruleset's shape: shared chains that never change, element-only diffs for
policy changes, per-pod maps of constant shape, stable class numbers."""

from __future__ import annotations

import ipaddress
from typing import Any

from netpolicy.cluster import ClusterState, ContainerPort, Namespace, Pod
from netpolicy.compiler import compile_ruleset
from netpolicy.model import Direction, Protocol, parse_policy
from netpolicy.ruleset import diff_document, full_document


def pod(name: str, n: int, node: str = "n1", app: str = "web") -> Pod:
    return Pod("x", name, {"app": app}, ipaddress.IPv4Address(f"10.244.0.{n}"), node, (ContainerPort(80, Protocol.TCP, "http"),))


def np(name: str, app: str, from_app: str, port: int = 80) -> Any:
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": "x"},
                         "spec": {"podSelector": {"matchLabels": {"app": app}},
                                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from_app}}}],
                                               "ports": [{"port": port}]}]}})


STATE = ClusterState.build([Namespace.create("x")], [pod("a", 1), pod("b", 2, app="db"), pod("c", 3, "n2")])


SHARED_CHAINS = ("forward", "egress", "ingress")


def rules(doc: dict[str, Any], shared: bool) -> list[Any]:
    return [c["add"]["rule"] for c in doc["nftables"]
            if "add" in c and "rule" in c["add"] and (c["add"]["rule"]["chain"] in SHARED_CHAINS) == shared]


def test_shared_chains_do_not_depend_on_policies_or_pods() -> None:
    empty = full_document(compile_ruleset(ClusterState.build([Namespace.create("x")], []), "n1"))
    busy = full_document(compile_ruleset(STATE.with_policy(np("p", "db", "web")).with_policy(np("q", "web", "db", 81)), "n1"))
    assert rules(empty, shared=True) == rules(busy, shared=True)


def test_a_pods_chain_is_three_lookups_whatever_its_policies() -> None:
    many = STATE
    for i in range(20):
        many = many.with_policy(np(f"p{i}", "web", "db", 8000 + i))
    per_pod = rules(full_document(compile_ruleset(many, "n1")), shared=False)
    assert {r["chain"] for r in per_pod} == {"i_0af40001"} and len(per_pod) == 3


def test_only_this_nodes_pods_get_decisions() -> None:
    ruleset = compile_ruleset(STATE.with_policy(np("p", "web", "db")), "n1")
    assert ruleset.local_pods == {int(ipaddress.IPv4Address("10.244.0.1")), int(ipaddress.IPv4Address("10.244.0.2"))}
    assert set(ruleset.rules[Direction.INGRESS]) == {int(ipaddress.IPv4Address("10.244.0.1"))}


def test_decisions_name_their_policy() -> None:
    ruleset = compile_ruleset(STATE.with_policy(np("allow-db", "web", "db")), "n1")
    comments = {e.comment for pod_map in ruleset.rules[Direction.INGRESS].values() for e in pod_map.values()}
    assert comments == {"NetworkPolicy x/allow-db ingress[0]"}
    assert {e.comment for e in ruleset.defaults[Direction.INGRESS].values()} == {"isolated by NetworkPolicy x/allow-db"}


def test_a_policy_change_diffs_to_element_commands_only() -> None:
    before = compile_ruleset(STATE.with_policy(np("p", "web", "db")), "n1")
    after = compile_ruleset(STATE.with_policy(np("p", "web", "db", port=8080)), "n1", before)
    commands = diff_document(before, after)["nftables"]
    assert commands and all(set(c) <= {"add", "delete"} and "element" in next(iter(c.values())) for c in commands)


def test_a_pod_gaining_class_decisions_gets_its_own_map_and_chain() -> None:
    before = compile_ruleset(STATE, "n1")
    after = compile_ruleset(STATE.with_policy(np("p", "web", "db")), "n1", before)
    created = [next(iter(c["add"])) for c in diff_document(before, after)["nftables"] if "add" in c]
    assert created.count("map") == 1 and created.count("chain") == 1  # i_0af40001, for x/a


def test_nothing_changed_is_an_empty_diff() -> None:
    before = compile_ruleset(STATE.with_policy(np("p", "web", "db")), "n1")
    again = compile_ruleset(STATE.with_policy(np("p", "web", "db")), "n1", before)
    assert diff_document(before, again) == {"nftables": []}


def test_peer_classes_keep_their_numbers_across_compilations() -> None:
    before = compile_ruleset(STATE.with_policy(np("p", "web", "db")), "n1")
    grown = STATE.with_pod(pod("d", 4, app="db")).with_policy(np("p", "web", "db")).with_policy(np("q", "db", "web"))
    after = compile_ruleset(grown, "n1", before)
    for signature, number in before.class_ids.items():
        if signature in after.class_ids:
            assert after.class_ids[signature] == number


def test_pods_with_the_same_labels_share_a_class() -> None:
    state = STATE.with_pod(pod("d", 4, app="db")).with_policy(np("p", "web", "db"))
    ruleset = compile_ruleset(state, "n1")
    db = [int(ipaddress.IPv4Address(a)) for a in ("10.244.0.2", "10.244.0.4")]
    assert ruleset.pod_classes[db[0]] == ruleset.pod_classes[db[1]]
