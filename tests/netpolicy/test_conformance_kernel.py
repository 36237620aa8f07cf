"""The conformance runner, with the direct backend (compile + apply into namespaces this
test creates), passes every np-* case of the shared corpus through the real kernel."""

from __future__ import annotations

import asyncio

import pytest

from netpolicy.conformance.corpus import load_corpus
from netpolicy.conformance.direct import DirectPolicy, DirectTopology
from netpolicy.conformance.runner import RunOptions, run_cases
from tests.kernel import KernelResources
from tests.netpolicy.corpus import CORPUS

pytestmark = pytest.mark.privileged


@pytest.mark.timeout(600)
def test_every_np_case_passes_on_one_node(kernel: KernelResources) -> None:
    cases = load_corpus(CORPUS, only="np-*")
    assert len(cases) >= 40

    async def run() -> str:
        topology = DirectTopology(kernel)
        try:
            report = await run_cases(cases, topology, DirectPolicy(topology), RunOptions(timeout=1.0))
        finally:
            await topology.tear_down_pods()
        assert report.passed, report.table()
        summary = report.summary()
        assert summary["probes"] > 2000 and summary["not_run"] > 0  # SCTP blocks are reported, not run
        return report.table()

    print(asyncio.run(run()))


@pytest.mark.timeout(600)
def test_every_np_case_passes_across_two_nodes_joined_by_vxlan(kernel: KernelResources) -> None:
    cases = load_corpus(CORPUS, only="np-*")

    async def run() -> None:
        topology = DirectTopology(kernel, nodes=2)
        try:
            await topology.bring_up(cases[0].topology)
            placement = await topology.bring_up(cases[0].topology)
            assert set(placement.nodes.values()) == {"node-1", "node-2"}
            report = await run_cases(cases, topology, DirectPolicy(topology), RunOptions(timeout=1.0))
        finally:
            await topology.tear_down_pods()
        assert report.passed, report.table()

    asyncio.run(run())


@pytest.mark.timeout(300)
def test_every_admin_and_baseline_case_passes_on_one_node(kernel: KernelResources) -> None:
    cases = load_corpus(CORPUS, only="*anp-*")
    assert {c.name.split("-")[0] for c in cases} == {"anp", "banp"}

    async def run() -> None:
        topology = DirectTopology(kernel)
        try:
            report = await run_cases(cases, topology, DirectPolicy(topology), RunOptions(timeout=1.0))
        finally:
            await topology.tear_down_pods()
        assert report.passed, report.table()

    asyncio.run(run())
