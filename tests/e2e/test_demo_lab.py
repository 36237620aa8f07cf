"""`meshctl demo`'s scenario on its own lab: what it reports is what the mesh did (the
split within its statistical bound, the SPIFFE identities on the hop, no plaintext on the
underlay, the visitor refused, the failing pod ejected and then sent nothing), and
tearing the lab down leaves nothing behind."""

from __future__ import annotations

import math
import secrets

import pytest

from cni.lab import Lab, LabError
from control.meshctl.demo.scenario import FAILING, NAMESPACE, Demo, Findings
from tests.e2e.mesh import leftovers, spiffe

pytestmark = pytest.mark.privileged

REQUESTS = 200


@pytest.fixture(scope="module")
def findings() -> Findings:
    name = f"dm{secrets.token_hex(3)}"
    demo = Demo(name, REQUESTS, lambda line: None)
    try:
        found = demo.run()
    finally:
        assert Lab(name).down() == []
        assert leftovers(name) == []
    with pytest.raises(LabError, match="is not up"):
        Lab.open(name)
    return found


def test_the_split_is_ninety_ten_within_its_binomial_bound(findings: Findings) -> None:
    split = findings.split
    assert split["statuses"] == {"200": REQUESTS} and split["errors"] == {}, split
    v2 = split["versions"].get("v2", 0)
    assert abs(v2 - REQUESTS * 0.1) <= 4.5 * math.sqrt(REQUESTS * 0.1 * 0.9), split["versions"]


def test_every_hop_carries_the_frontends_and_the_catalogs_spiffe_ids(findings: Findings) -> None:
    assert findings.split["callers"] == {spiffe(NAMESPACE, "frontend"): REQUESTS}
    assert findings.split["servers"] == {spiffe(NAMESPACE, "catalog"): REQUESTS}


def test_no_plaintext_http_crosses_the_underlay(findings: Findings) -> None:
    wire = findings.underlay
    assert wire["vxlan_frames"] > 0 and wire["tcp_payload_segments"] > 0, wire
    assert wire["plaintext_http_segments"] == 0, wire["samples"]


def test_the_visitor_is_refused_by_policy(findings: Findings) -> None:
    assert findings.refused["status"] == 0, findings.refused
    assert "DENY" in findings.explain


def test_the_failing_pod_is_ejected_and_then_gets_no_requests(findings: Findings) -> None:
    outlier, later = findings.outlier, findings.after_ejection
    assert outlier["statuses"] == {"200": REQUESTS}, outlier  # retried around while it failed
    assert outlier["ejections"] >= 1 and outlier["ejected_now"] == 1, outlier
    assert findings.failing_pod_requests == 0
    assert later["statuses"] == {"200": REQUESTS} and FAILING not in later["pods"], later
