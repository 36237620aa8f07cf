"""Property: for random labels, policies (NetworkPolicy, ANP, BANP) and packets, the
kernel running the compiled ruleset decides exactly as the evaluator does. Packets go
through real namespaces and the node's forward hook; rulesets are applied as diffs from
the previous example's, so the incremental path is exercised too. Besides the 3x3 pods,
one namespace on the bridge is *not* a pod of the cluster (an outside address, 10.244.3.10),
so ipBlock/networks peers are checked against non-pod traffic both ways."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from netpolicy.cluster import ClusterState, Namespace, Pod
from netpolicy.conformance.corpus import Probe, Step, Topology, TopologyPod, load_corpus
from netpolicy.conformance.direct import DirectPolicy, DirectTopology
from netpolicy.evaluate import evaluate
from netpolicy.model import Protocol, parse_policy
from tests.kernel import KernelResources
from tests.netpolicy.corpus import CORPUS
from tests.netpolicy.policy_strategies import NAMESPACES, NS_LABELS, POD_LABELS, PODS, policy_set

pytestmark = pytest.mark.privileged

OUTSIDE = ("outside", "host")
ENDPOINTS = [(ns, pod) for ns in NAMESPACES for pod in PODS] + [OUTSIDE]
PAIRS = [(a, b) for a in ENDPOINTS for b in ENDPOINTS if a != b]
PACKETS = st.lists(
    st.tuples(st.sampled_from(PAIRS), st.sampled_from([Protocol.TCP, Protocol.UDP]), st.sampled_from([80, 81])),
    min_size=8, max_size=16, unique=True,
)


def topology_with_outsider() -> Topology:
    (case,) = load_corpus(CORPUS, only="np-default-deny-ingress")
    pod = case.topology.pods[0]
    return Topology(
        (*case.topology.namespaces, Namespace.create(OUTSIDE[0])),
        (*case.topology.pods, TopologyPod(OUTSIDE[0], OUTSIDE[1], {}, pod.ports)),
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("nodes", [1, 2], ids=["one-node", "two-nodes"])
def test_kernel_verdicts_equal_the_evaluator(kernel: KernelResources, nodes: int) -> None:
    topology_def = topology_with_outsider()
    loop = asyncio.new_event_loop()
    topology = DirectTopology(kernel, nodes=nodes)
    placement = loop.run_until_complete(topology.bring_up(topology_def))
    policy = DirectPolicy(topology)
    base_pods = {(p.namespace, p.name): p for p in topology_def.pods if (p.namespace, p.name) != OUTSIDE}
    outside = placement.ips[OUTSIDE]
    first = True

    # No shrinking: each example costs real probes, and a failure prints its example and
    # every mismatching packet anyway.
    @settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ns_labels=st.fixed_dictionaries({ns: NS_LABELS for ns in NAMESPACES}),
           pod_labels=st.fixed_dictionaries({ref: POD_LABELS for ref in base_pods}),
           docs=policy_set(), packets=PACKETS)
    def check(ns_labels: dict[str, dict[str, str]], pod_labels: dict[tuple[str, str], dict[str, str]],
              docs: list[dict[str, Any]], packets: list[Any]) -> None:
        nonlocal first
        state = ClusterState.build(
            [Namespace.create(ns, labels) for ns, labels in ns_labels.items()],
            [Pod(ns, name, pod_labels[(ns, name)], placement.ips[(ns, name)], placement.nodes[(ns, name)],
                 base_pods[(ns, name)].ports)
             for ns, name in base_pods],
            [parse_policy(d) for d in docs],
        )
        if first:
            loop.run_until_complete(policy.reset(state))
            first = False
        else:
            loop.run_until_complete(policy.apply(state, Step("", (), (), ())))
        probes = [Probe(src, dst, proto, port, "") for (src, dst), proto, port in packets]

        async def run() -> list[bool]:
            return list(await asyncio.gather(*(topology.probe(p, 0.5) for p in probes)))

        got = loop.run_until_complete(run())
        wrong = []
        for probe, ok in zip(probes, got, strict=True):
            src = state.pods.get(probe.src, outside)
            dst = state.pods.get(probe.dst, outside)
            want = evaluate(state, src, dst, probe.port, probe.protocol).value
            if ("allow" if ok else "deny") != want:
                wrong.append(f"{probe}: evaluator says {want}, kernel {'allowed' if ok else 'denied'}")
        assert not wrong, "\n".join(wrong)

    try:
        check()
    finally:
        loop.run_until_complete(topology.tear_down_pods())
        loop.close()
