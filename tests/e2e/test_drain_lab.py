"""Removing a meshed pod drains it: it leaves every sidecar's endpoints before its app and
sidecar stop, and what is in flight finishes, so clients see no failed request (two-node
lab, real kernel, tulle-proxy sidecars; retries are off, so nothing is papered over)."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from cni.lab import Lab
from tests.e2e.mesh import app, apply, client, eventually, lab_fixture, server, service

pytestmark = pytest.mark.privileged

LOAD_SECONDS = 8
CLIENTS = 3


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture("dr")


@pytest.fixture
def ns(lab: Lab) -> str:
    name = f"d{secrets.token_hex(3)}"
    apply(lab, service(name, "web", {"app": "web"}),
          {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web", "namespace": name},
           "spec": {"hosts": [f"web.{name}.svc.cluster.local"],
                    "http": [{"route": [{"destination": {"host": f"web.{name}.svc.cluster.local"}}],
                              "retries": {"attempts": 0}}]}})
    return name


def test_deleting_an_endpoint_pod_under_load_fails_no_request(lab: Lab, ns: str) -> None:
    server(lab, ns, "web-a", "node-1", {"app": "web"})
    leaving = server(lab, ns, "web-b", "node-2", {"app": "web"})
    caller = client(lab, ns, "caller", "node-1")
    eventually(lambda: json.loads(lab.exec(caller, app("get", f"http://web.{ns}:8080/", "20"),
                                           capture_output=True).stdout)["pods"].keys() == {"web-a", "web-b"},
               "the caller's sidecar balances over both endpoints")
    load = lab.spawn(caller, app("load", f"http://web.{ns}:8080/slow?ms=20", str(LOAD_SECONDS), str(CLIENTS)),
                     stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(LOAD_SECONDS / 3)
        lab.delete_pod(ns, "web-b")
        out, _ = load.communicate(timeout=LOAD_SECONDS + 30)
    finally:
        load.kill()
    summary = json.loads(out)
    assert summary["errors"] == {} and set(summary["statuses"]) == {"200"}, summary
    assert summary["pods"]["web-b"] > 0 and summary["pods"]["web-a"] > summary["pods"]["web-b"], summary
    assert leaving.ip not in [p.ip for p in lab.pods()]


def test_a_request_in_flight_when_its_pod_is_deleted_gets_its_answer(lab: Lab, ns: str) -> None:
    server(lab, ns, "web-a", "node-2", {"app": "web"})
    caller = client(lab, ns, "caller", "node-1")
    eventually(lambda: lab.exec(caller, ["curl", "-sf", "-m", "3", f"http://web.{ns}:8080/"],
                                capture_output=True).returncode == 0, "the caller reaches web")
    slow = lab.spawn(caller, app("get", f"http://web.{ns}:8080/slow?ms=1500", "1"), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        events_dir = lab.dir / "pods" / f"{ns}.web-a"
        lab.delete_pod(ns, "web-a")
        out, _ = slow.communicate(timeout=30)
    finally:
        slow.kill()
    assert json.loads(out)["statuses"] == {"200": 1}, out
    assert not events_dir.exists()
