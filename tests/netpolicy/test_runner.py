"""The conformance runner's judging rules, with in-memory backends."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections import Counter
from typing import Any

from netpolicy.cluster import ClusterState
from netpolicy.conformance.corpus import Case, Probe, Step, Topology, parse_case, parse_topology
from netpolicy.conformance.runner import Placement, RunOptions, run_cases
from netpolicy.evaluate import evaluate
from netpolicy.model import Protocol

TOPOLOGY = parse_topology({"namespaces": {"x": {"labels": {"kubernetes.io/metadata.name": "x"}, "pods": {
    "a": {"labels": {"pod": "a"}, "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "SCTP"}]},
    "b": {"labels": {"pod": "b"}, "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "SCTP"}]},
}}}}, "inline")

DENY_B = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny-b", "namespace": "x"},
          "spec": {"podSelector": {"matchLabels": {"pod": "b"}}}}


def case(expect_a_to_b: str, policies: tuple[dict[str, Any], ...] = (DENY_B,)) -> Case:
    return parse_case({"name": "t", "topology": "inline-ref", "steps": [{
        "apply": list(policies),
        "expect": [{"protocol": "TCP", "port": 80, "scope": ["x/a -> x/b"], "default": expect_a_to_b},
                   {"protocol": "SCTP", "port": 80, "default": "deny", "scope": ["x/a -> x/b"]}],
    }]}, {"inline-ref": TOPOLOGY}, "t")


A_TO_B = Probe(("x", "a"), ("x", "b"), Protocol.TCP, 80, "deny")


class ModelTopology:
    """Probes answered by the evaluator, with scripted flakes."""

    def __init__(self, flaky_first_allows: int = 0, flaky_denies: bool = False) -> None:
        self.state: ClusterState | None = None
        self.flaky_first_allows = flaky_first_allows
        self.flaky_denies = flaky_denies
        self.calls: Counter[Probe] = Counter()

    async def bring_up(self, topology: Topology) -> Placement:
        ips = {(p.namespace, p.name): ipaddress.IPv4Address(f"10.244.0.{10 + i}") for i, p in enumerate(topology.pods)}
        return Placement(ips, dict.fromkeys(ips, "n1"))

    def can_probe(self, protocol: Protocol) -> bool:
        return protocol is not Protocol.SCTP

    async def probe(self, probe: Probe, timeout: float) -> bool:
        assert self.state is not None
        self.calls[probe] += 1
        truth = evaluate(self.state, self.state.pods[probe.src], self.state.pods[probe.dst], probe.port, probe.protocol).value
        if truth == "allow" and self.flaky_first_allows:
            self.flaky_first_allows -= 1
            return False
        return truth == "allow" or self.flaky_denies


class ModelPolicy:
    def __init__(self, topology: ModelTopology) -> None:
        self.topology = topology

    async def reset(self, state: ClusterState) -> None:
        self.topology.state = state

    async def apply(self, state: ClusterState, step: Step) -> None:
        self.topology.state = state


def run(c: Case, topology: ModelTopology, baseline: bool = True) -> dict[str, Any]:
    options = RunOptions(timeout=0.1, baseline=baseline)
    report = asyncio.run(run_cases([c], topology, ModelPolicy(topology), options))
    return json.loads(report.as_json())


def test_a_correct_engine_passes_and_sctp_is_reported_not_run() -> None:
    result = run(case("deny"), ModelTopology())
    assert result["summary"] == {**result["summary"], "passed": 1, "failed": 0, "not_run": 1, "probes": 1}
    assert result["cases"][0]["mismatches"] == []


def test_a_wrong_expectation_is_a_mismatch_naming_pair_port_and_verdicts() -> None:
    result = run(case("allow"), ModelTopology())
    assert not result["cases"][0]["passed"]
    assert result["cases"][0]["mismatches"] == ["step 1: x/a -> x/b TCP/80: expected allow, got deny"]


def test_a_lost_allow_is_probed_once_more() -> None:
    topology = ModelTopology(flaky_first_allows=1)
    assert run(case("allow", policies=()), topology, baseline=False)["cases"][0]["passed"]
    assert topology.calls[Probe(A_TO_B.src, A_TO_B.dst, A_TO_B.protocol, A_TO_B.port, "allow")] == 2


def test_a_deny_is_never_satisfied_by_a_retry() -> None:
    topology = ModelTopology(flaky_denies=True)
    result = run(case("deny"), topology)
    assert not result["cases"][0]["passed"]
    assert topology.calls[A_TO_B] == 1  # judged once: no second chance for a deny


def test_a_broken_environment_fails_the_baseline_before_any_policy() -> None:
    topology = ModelTopology(flaky_first_allows=2)
    result = run(case("deny"), topology)
    assert result["cases"][0]["mismatches"] == ["baseline (no policy): x/a -> x/b TCP/80: expected allow, got deny"]
    assert topology.calls[A_TO_B] == 0
