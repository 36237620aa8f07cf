"""The evaluator reproduces every expected verdict of every case of the shared corpus
(np-*, np-legacy-*, anp-*, banp-*), with probes expanded by the corpus's own validator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netpolicy.conformance.corpus import apply_step, initial_state, load_corpus
from netpolicy.evaluate import evaluate
from netpolicy.model import Protocol
from tests.netpolicy.corpus import CASE_FILES, CORPUS, addresses, reference_expander

VALIDATOR = reference_expander()
CASES = {case.name: case for case in load_corpus(CORPUS)}


def reference_probes(path: Path) -> list[tuple[Any, ...]]:
    _, checker, probes = VALIDATOR.check_case(path, {})
    assert not checker.errors, checker.errors
    return [(step, proto, port, src, dst, verdict) for (step, proto, port, src, dst, verdict) in probes]


def test_corpus_has_every_family() -> None:
    names = [p.stem for p in CASE_FILES]
    assert len(names) == len(CASES) >= 61
    for family in ("np-", "np-legacy-", "anp-", "banp-"):
        assert any(n.startswith(family) for n in names), family


def test_only_takes_a_comma_separated_list_of_globs() -> None:
    names = [c.name for c in load_corpus(CORPUS, only="anp-*, banp-*")]
    assert names == sorted(n for n in CASES if n.startswith(("anp-", "banp-"))) and len(names) >= 13


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_probe_expansion_matches_the_corpus_validator(path: Path) -> None:
    case = CASES[path.stem]
    ours = [
        (si, probe.protocol.value, probe.port, probe.src, probe.dst, probe.expected)
        for si, step in enumerate(case.steps, 1)
        for probe in step.probes
    ]
    assert ours == reference_probes(path)


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_evaluator_reproduces_every_expected_verdict(path: Path) -> None:
    case = CASES[path.stem]
    ips = addresses(case.topology)
    state = initial_state(case.topology, ips, dict.fromkeys(ips, "node-1"))
    expected = reference_probes(path)
    mismatches = []
    checked = 0
    for si, step in enumerate(case.steps, 1):
        state = apply_step(state, step, ips.__getitem__)
        for (psi, proto, port, src, dst, verdict) in expected:
            if psi != si:
                continue
            got = evaluate(state, state.pods[src], state.pods[dst], port, Protocol(proto)).value
            checked += 1
            if got != verdict:
                mismatches.append(f"step {si}: {src[0]}/{src[1]} -> {dst[0]}/{dst[1]} {proto}/{port}: expected {verdict}, got {got}")
    assert checked == len(expected)
    assert not mismatches, "\n".join(mismatches)
