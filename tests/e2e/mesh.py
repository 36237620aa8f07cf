"""What the end-to-end tests do to a lab and read from it: deploy the test app
(`mesh_app.py`) behind sidecars, apply config, drive traffic from inside pods, and read a
sidecar's own counters from its admin port."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cni.lab import Lab
from cni.lab.cluster import DEFAULT_ROOT
from cni.lab.topology import LabPod
from proxy.stats_text import parse_stats

APP = str(Path(__file__).with_name("mesh_app.py"))
HTTP_PORT = 8080
TCP_PORT = 9000
ADMIN = "http://127.0.0.1:15000"


def spiffe(namespace: str, service_account: str) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/{service_account}"


def app(*argv: str) -> list[str]:
    return [sys.executable, APP, *argv]


def lab_processes(lab_dir: Path) -> list[str]:
    """Command lines of live processes that name a file under `lab_dir` (agents, control
    plane, pod supervisors, sidecars)."""
    marker = f"{lab_dir}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in argv and state not in ("Z", "X"):
            found.append(argv.replace(b"\0", b" ").decode(errors="replace")[:300])
    return found


def leftovers(name: str) -> list[str]:
    """Anything of lab `name` still on the machine: namespaces, files, processes."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found = [n for n in listed if n.startswith(f"tl-{name}.")]
    found += [str(p) for p in Path("/etc/netns").glob(f"tl-{name}.*")]
    lab_dir = DEFAULT_ROOT / name
    found += [str(lab_dir)] if lab_dir.exists() else []
    return found + lab_processes(lab_dir)


def lab_fixture(prefix: str) -> Iterator[Lab]:
    """A two-node lab with a control plane for one test module; its removal must leave nothing."""
    name = f"{prefix}{secrets.token_hex(3)}"
    try:
        yield Lab.up(name, nodes=2, control=True)
    finally:
        assert Lab(name).down() == []
        assert leftovers(name) == []


def apply(lab: Lab, *docs: Mapping[str, Any]) -> None:
    """Applies `docs`, creating their namespaces first."""
    with lab.api() as api:
        for namespace in sorted({d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}):
            api.ensure_namespace(namespace)
        api.apply(*docs)


def service(namespace: str, name: str, selector: Mapping[str, str], tcp: bool = False) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [{"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT}]
    if tcp:
        ports.append({"name": "tcp-echo", "port": TCP_PORT, "targetPort": TCP_PORT})
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": dict(selector), "ports": ports}}


def server(lab: Lab, namespace: str, name: str, node: str, labels: Mapping[str, str], meshed: bool = True,
           service_account: str = "") -> LabPod:
    """A pod running the test app's servers (HTTP :8080, TCP :9000), answering once up."""
    pod = lab.add_pod(namespace, name, node=node, labels=dict(labels), inject=meshed,
                      annotations=None if meshed else {"sidecar.tulle.io/inject": "false"},
                      app=app("serve", name), service_account=service_account)
    eventually(lambda: lab.exec(pod, ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{HTTP_PORT}/"],
                                capture_output=True).returncode == 0, f"{name} answers")
    return pod


def client(lab: Lab, namespace: str, name: str, node: str, meshed: bool = True, service_account: str = "",
           labels: Mapping[str, str] | None = None) -> LabPod:
    """A pod to run requests from (`lab.exec` runs them inside it, captured when meshed)."""
    return lab.add_pod(namespace, name, node=node, inject=meshed, labels=dict(labels or {}),
                       annotations=None if meshed else {"sidecar.tulle.io/inject": "false"},
                       app=["sleep", "3600"] if meshed else (), service_account=service_account)


def get(lab: Lab, pod: LabPod, url: str, count: int = 1, timeout: float = 60) -> dict[str, Any]:
    """`count` sequential keep-alive GETs from inside `pod`: statuses, errors, pods, callers."""
    done = lab.exec(pod, app("get", url, str(count)), capture_output=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-1000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def tcp(lab: Lab, pod: LabPod, host: str, port: int = TCP_PORT) -> str:
    """One client-first TCP exchange from inside `pod`: the answering pod's name, or the error."""
    done = lab.exec(pod, app("tcp", host, str(port)), capture_output=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def curl_status(lab: Lab, pod: LabPod, url: str, method: str = "GET", timeout: float = 3) -> int:
    """The HTTP status `pod` gets for `url`; 0 when nothing answered in time."""
    done = lab.exec(pod, ["curl", "-s", "-o", "/dev/null", "-m", str(timeout), "-X", method, "-w", "%{http_code}", url],
                    capture_output=True, timeout=timeout + 10)
    return int(done.stdout) if done.stdout.strip().isdigit() else 0


def stats(lab: Lab, pod: LabPod, pattern: str = "") -> dict[str, int]:
    """The counters of `pod`'s sidecar whose names match `pattern` (a regex)."""
    done = lab.exec(pod, ["curl", "-s", "-G", "--data-urlencode", f"filter={pattern}", f"{ADMIN}/stats"],
                    capture_output=True)
    return dict(parse_stats(done.stdout).values)


def stat_sum(lab: Lab, pod: LabPod, pattern: str) -> int:
    return sum(stats(lab, pod, pattern).values())


def inbound_requests(lab: Lab, pod: LabPod) -> int:
    """HTTP requests `pod`'s sidecar has passed to its app (the inbound cluster's count:
    the mTLS and plaintext filter chains each count their own http.inbound_* stats)."""
    return stat_sum(lab, pod, re.escape(f"cluster.inbound|{HTTP_PORT}||.upstream_rq_total") + "$")


def eventually(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting until {what}")
        time.sleep(0.1)
