"""tulle-proxy against the real Envoy: the envoy-diff scenarios, one case each.

Each case runs ../shared/envoy-diff/run.py on one scenario: the harness drives the same
traffic through Envoy 1.40 and through tulle-proxy with the same bootstrap and compares what
clients and upstreams saw. The shared list is explicit so that a regression fails a named
case; tests/proxy/scenarios/ holds Tulle's own scenarios in the same format (every one of
them must pass).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PASSING = [
    "cb-max-requests",
    "direct-response-redirect",
    "forwarded-headers",
    "hc-http-unhealthy",
    "headers-add-remove",
    "lb-least-request",
    "lb-random",
    "lb-ring-hash",
    "lb-round-robin",
    "lb-weighted-clusters",
    "outlier-consecutive-5xx",
    "retry-5xx",
    "retry-backoff",
    "retry-connect-failure",
    "retry-gateway-error",
    "retry-per-try-timeout",
    "rewrite-prefix-host",
    "route-header-match",
    "route-no-route-404",
    "route-path-prefix",
    "route-safe-regex",
    "tcp-proxy-echo",
    "timeout-route-504",
]


def _envoy_diff() -> Path:
    for parent in REPO.parents:
        candidate = parent / "shared" / "envoy-diff"
        if (candidate / "run.py").exists():
            return candidate
    raise FileNotFoundError("shared/envoy-diff not found above the repository")


OWN = Path(__file__).resolve().parent / "scenarios"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", PASSING)
def test_shared_scenario_matches_envoy(scenario: str, tmp_path: Path) -> None:
    run_scenario(_envoy_diff() / "scenarios", scenario, tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", sorted(path.stem for path in OWN.glob("*.yaml")))
def test_own_scenario_matches_envoy(scenario: str, tmp_path: Path) -> None:
    run_scenario(OWN, scenario, tmp_path)


def run_scenario(directory: Path, scenario: str, tmp_path: Path) -> None:
    harness = _envoy_diff()
    proxy = REPO / ".venv" / "bin" / "tulle-proxy"
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, str(harness / "run.py"),
         "--proxy", f"{proxy} -c {{config}} --concurrency 1",
         "--scenarios", str(directory), "--only", scenario, "--json", str(out)],
        capture_output=True, text=True, timeout=110, check=False)
    result = json.loads(out.read_text())
    [outcome] = result["scenarios"]
    failures = [check for check in outcome["checks"] if not check["pass"]]
    assert outcome["pass"], completed.stdout[-4000:] + json.dumps(failures, indent=1)[:4000]
