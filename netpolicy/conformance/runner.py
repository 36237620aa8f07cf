"""Replays conformance cases against an engine and judges every probe.

Theory of operation, per case:
1. The topology backend brings up the case's pods (reusing them when the previous case
   had the same topology) and says where each pod is (IP, node).
2. The policy backend is reset to the topology's clean state (labels as in the topology,
   no policies), and a *baseline* is probed: every pair and port the case will probe
   must connect with no policy at all (a failure is probed once more), else the
   environment is broken and the case fails without judging policy.
3. For each step: the step's objects are applied to the model (`apply_step`, which
   validates them), the policy backend programs the result and returns once it is in
   force, then the step's probes run concurrently (bounded by `concurrency`).
4. A probe expected to `allow` that was denied is probed once more (a lost SYN on a busy
   machine is not a policy bug); a probe expected to `deny` that got through is a
   mismatch at once — a deny is never satisfied by a retry.
SCTP probes are not run (this kernel has no SCTP sockets); they are reported as such
and neither pass nor fail a case. Policies naming SCTP are still compiled and enforced.

Backends are protocols, so the same runner drives the direct backend of
`netpolicy.conformance.direct` (compile and apply into local namespaces) and, later,
a lab driven through the control plane.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from netpolicy.cluster import ClusterState
from netpolicy.conformance.corpus import (
    Case,
    PodRef,
    Probe,
    Step,
    Topology,
    apply_step,
    initial_state,
)
from netpolicy.model import Protocol as L4


@dataclass(frozen=True, slots=True)
class Placement:
    ips: Mapping[PodRef, ipaddress.IPv4Address]
    nodes: Mapping[PodRef, str]


class TopologyBackend(Protocol):
    async def bring_up(self, topology: Topology) -> Placement:
        """Pods of `topology` running and serving their ports; may reuse the last one."""
        ...

    async def probe(self, probe: Probe, timeout: float) -> bool:
        """True when the connection succeeded (TCP handshake / UDP reply)."""
        ...

    def can_probe(self, protocol: L4) -> bool: ...


class PolicyBackend(Protocol):
    async def reset(self, state: ClusterState) -> None:
        """Programs a clean state (the topology, no policies)."""
        ...

    async def apply(self, state: ClusterState, step: Step) -> None:
        """Programs `state` (the result of `step`); returns once it is in force."""
        ...


@dataclass
class CaseResult:
    name: str
    passed: bool = True
    probes: int = 0
    not_run: int = 0
    mismatches: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "probes": self.probes, "not_run": self.not_run,
                "mismatches": self.mismatches, "error": self.error, "seconds": round(self.seconds, 3)}


@dataclass
class Report:
    cases: list[CaseResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def summary(self) -> dict[str, Any]:
        return {
            "cases": len(self.cases),
            "passed": sum(c.passed for c in self.cases),
            "failed": sum(not c.passed for c in self.cases),
            "probes": sum(c.probes for c in self.cases),
            "not_run": sum(c.not_run for c in self.cases),
            "mismatches": sum(len(c.mismatches) for c in self.cases),
            "seconds": round(sum(c.seconds for c in self.cases), 3),
        }

    def as_json(self) -> str:
        return json.dumps({"cases": [c.as_dict() for c in self.cases], "summary": self.summary()}, indent=2)

    def table(self) -> str:
        lines = [f"{'case':<52} {'result':<6} {'probes':>6} {'not run':>7} {'s':>6}"]
        for c in self.cases:
            lines.append(f"{c.name:<52} {'pass' if c.passed else 'FAIL':<6} {c.probes:>6} {c.not_run:>7} {c.seconds:>6.1f}")
            lines += [f"    {m}" for m in c.mismatches[:20]]
            if len(c.mismatches) > 20:
                lines.append(f"    ... {len(c.mismatches) - 20} more")
            if c.error:
                lines.append(f"    error: {c.error}")
        s = self.summary()
        lines.append(f"{s['passed']}/{s['cases']} cases passed, {s['probes']} probes, {s['not_run']} not run, "
                     f"{s['mismatches']} mismatches, {s['seconds']} s")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RunOptions:
    timeout: float = 2.0       # per probe, seconds (the corpus recommends 2 s)
    concurrency: int = 64      # probes in flight at once
    baseline: bool = True      # check that everything connects before step 1


async def run_cases(cases: Sequence[Case], topology: TopologyBackend, policy: PolicyBackend,
                    options: RunOptions = RunOptions()) -> Report:
    results = []
    for case in cases:
        results.append(await run_case(case, topology, policy, options))
    return Report(results)


async def run_case(case: Case, topology: TopologyBackend, policy: PolicyBackend, options: RunOptions) -> CaseResult:
    result = CaseResult(case.name)
    started = time.monotonic()
    try:
        placement = await topology.bring_up(case.topology)
        state = initial_state(case.topology, placement.ips, placement.nodes)
        await policy.reset(state)
        if options.baseline:
            await _baseline(case, topology, options, result)
        if result.passed:
            for index, step in enumerate(case.steps, 1):
                state = apply_step(state, step, placement.ips.__getitem__)
                await policy.apply(state, step)
                await _probe_step(index, step, topology, options, result)
    except Exception as e:  # a broken case is reported, not raised: the others still run
        result.passed = False
        result.error = f"{type(e).__name__}: {e}"
    result.seconds = time.monotonic() - started
    return result


async def _baseline(case: Case, topology: TopologyBackend, options: RunOptions, result: CaseResult) -> None:
    wanted = {(p.src, p.dst, p.protocol, p.port) for step in case.steps for p in step.probes
              if topology.can_probe(p.protocol)}
    probes = [Probe(s, d, proto, port, "allow") for s, d, proto, port in sorted(wanted, key=str)]
    got = await _run_probes(probes, topology, options)
    lost = [p for p, ok in zip(probes, got, strict=True) if not ok]
    broken = [p for p, ok in zip(lost, await _run_probes(lost, topology, options), strict=True) if not ok]
    if broken:
        result.passed = False
        result.mismatches += [f"baseline (no policy): {p}: expected allow, got deny" for p in broken]


async def _probe_step(index: int, step: Step, topology: TopologyBackend, options: RunOptions, result: CaseResult) -> None:
    runnable = [p for p in step.probes if topology.can_probe(p.protocol)]
    result.not_run += len(step.probes) - len(runnable)
    got = await _run_probes(runnable, topology, options)
    retry = [p for p, ok in zip(runnable, got, strict=True) if p.expected == "allow" and not ok]
    if retry:
        again = dict(zip(retry, await _run_probes(retry, topology, options), strict=True))
        got = [ok or again.get(p, False) for p, ok in zip(runnable, got, strict=True)]
    result.probes += len(runnable)
    for probe, ok in zip(runnable, got, strict=True):
        verdict = "allow" if ok else "deny"
        if verdict != probe.expected:
            result.passed = False
            result.mismatches.append(f"step {index}: {probe}: expected {probe.expected}, got {verdict}")


async def _run_probes(probes: Sequence[Probe], topology: TopologyBackend, options: RunOptions) -> list[bool]:
    limit = asyncio.Semaphore(options.concurrency)

    async def one(probe: Probe) -> bool:
        async with limit:
            return await topology.probe(probe, options.timeout)

    return list(await asyncio.gather(*(one(p) for p in probes)))
