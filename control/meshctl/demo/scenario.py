"""The demo's steps, on a real two-node lab: build it, deploy the shop, drive traffic,
break a catalog instance, and collect what each step showed (`Findings`) for the report.

Everything observed comes from the running system, never from the config that asked for
it: the split from which pod answered each request, identities from the
x-forwarded-client-cert header the catalog's sidecar set, plaintext from a raw capture on
the underlay, ejection from the frontend sidecar's own stats, policy from a connection
that does not get through. Every wait is bounded; a step that cannot finish raises
`DemoError` naming it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from cni.lab import Lab, LabError
from cni.lab.control import LabApi
from cni.lab.topology import LabPod
from proxy.admin.clusters_text import ClustersTextError, parse_clusters
from proxy.stats_text import StatsTextError, parse_stats

NAMESPACE: Final = "shop"
CATALOG_CLUSTER: Final = "outbound|8080|{subset}|catalog.shop.svc.cluster.local"
ADMIN: Final = "http://127.0.0.1:15000"
WAIT: Final = 60.0


class DemoError(RuntimeError):
    """A demo step that could not finish; the message says which and why."""


@dataclass(frozen=True)
class DemoPod:
    name: str
    node: str
    labels: dict[str, str]
    service_account: str
    app: tuple[str, ...]
    meshed: bool = True


def _app(*argv: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "control.meshctl.demo.apps", *argv)


PODS: Final = (
    DemoPod("catalog-v1-a", "node-1", {"app": "catalog", "version": "v1"}, "catalog", _app("catalog", "catalog-v1-a", "v1")),
    DemoPod("catalog-v1-b", "node-2", {"app": "catalog", "version": "v1"}, "catalog", _app("catalog", "catalog-v1-b", "v1")),
    DemoPod("catalog-v2", "node-2", {"app": "catalog", "version": "v2"}, "catalog", _app("catalog", "catalog-v2", "v2")),
    DemoPod("frontend", "node-1", {"app": "frontend"}, "frontend", _app("frontend")),
    # Unlabelled and outside the mesh: the NetworkPolicies leave it no way in to the catalog.
    DemoPod("visitor", "node-2", {}, "", (), meshed=False),
)
FAILING: Final = "catalog-v1-b"
ISSUED: Final = re.compile(r"issued (spiffe://\S+) to pod (\S+)")  # netpolicy/agent/identity.py's log line


@dataclass
class Findings:
    lab: str
    pods: list[dict[str, str]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    underlay: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, Any] = field(default_factory=dict)
    explain: str = ""
    outlier: dict[str, Any] = field(default_factory=dict)
    after_ejection: dict[str, Any] = field(default_factory=dict)
    failing_pod_requests: int = -1
    issued: dict[str, str] = field(default_factory=dict)  # pod -> identity its node's agent had signed
    timings: dict[str, float] = field(default_factory=dict)


def manifests() -> list[dict[str, Any]]:
    text = resources.files("control.meshctl.demo").joinpath("shop.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


class Demo:
    def __init__(self, lab_name: str, requests: int, progress: Callable[[str], None]) -> None:
        self.lab_name = lab_name
        self.requests = requests
        self.progress = progress
        self.findings = Findings(lab_name)
        self.lab: Lab | None = None
        self._pods: dict[str, LabPod] = {}
        self._started = time.monotonic()

    def run(self) -> Findings:
        for name, step in (("lab", self.build_lab), ("deploy", self.deploy), ("split", self.observe_split),
                           ("policy", self.observe_policy), ("outlier", self.observe_outlier)):
            step()
            self.findings.timings[name] = round(time.monotonic() - self._started, 1)
        return self.findings

    # -- steps -----------------------------------------------------------------------

    def build_lab(self) -> None:
        try:
            old = Lab.open(self.lab_name)
        except LabError:
            old = None
        if old is not None:
            self.progress(f"removing the previous lab {self.lab_name!r}")
            leftovers = old.down()
            if leftovers:
                raise DemoError("the previous demo lab could not be removed: " + "; ".join(leftovers))
        self.progress("building a two-node lab: underlay, tulle-control (SQLite), a tulle-agent per node")
        self.lab = Lab.up(self.lab_name, nodes=2, control=True)

    def deploy(self) -> None:
        lab = self._lab()
        docs = manifests()
        self.progress(f"applying {len(docs)} objects: Namespace, Services, VirtualService, DestinationRule, "
                      "PeerAuthentication, NetworkPolicies")
        with LabApi(lab.dir) as api:
            applied = api.apply(*docs)
        self.findings.applied = [f"{d['kind']} {'/'.join(filter(None, (d['metadata'].get('namespace'), d['metadata']['name'])))}"
                                 for d in applied]
        for spec in PODS:
            self.progress(f"starting pod {NAMESPACE}/{spec.name} on {spec.node}"
                          + (" (sidecar first, then the app)" if spec.meshed else " (no sidecar)"))
            annotations = {} if spec.meshed else {"sidecar.tulle.io/inject": "false"}
            pod = lab.add_pod(NAMESPACE, spec.name, node=spec.node, labels=spec.labels, annotations=annotations,
                              app=spec.app, service_account=spec.service_account)
            self._pods[spec.name] = pod
            identity = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{spec.service_account or 'default'}"
            self.findings.pods.append({"pod": f"{NAMESPACE}/{spec.name}", "node": spec.node, "ip": str(pod.ip),
                                       "sidecar": "tulle-proxy" if spec.meshed else "none",
                                       "identity": identity if spec.meshed else "-"})
        for spec in PODS:
            if spec.app:
                self._until(f"{spec.name}'s app answers", functools.partial(self._answers, spec.name))
        self._until("the frontend's sidecar has all three catalog endpoints", self._catalog_endpoints_known)
        self.findings.issued = self._issued()

    def observe_split(self) -> None:
        lab = self._lab()
        self.progress(f"frontend → catalog: {self.requests} requests, while counting what crosses the underlay")
        capture = lab.capture_underlay("node-1", seconds=120)
        try:
            self.findings.split = self._drive(self.requests)
        finally:
            self.findings.underlay = capture.stop()

    def observe_policy(self) -> None:
        self.progress("shop/visitor (no labels, no sidecar) → catalog:8080")
        started = time.monotonic()
        status, body = self._curl("visitor", "http://catalog.shop:8080/", timeout=2)
        self.findings.refused = {"status": status, "body": body[:200], "seconds": round(time.monotonic() - started, 1)}
        done = self._meshctl(["netpol", "explain", f"{NAMESPACE}/visitor", f"{NAMESPACE}/catalog-v1-a", "8080/TCP"])
        self.findings.explain = done.strip()

    def observe_outlier(self) -> None:
        self.progress(f"making {FAILING} answer 503, then {self.requests} more requests")
        status, _ = self._curl(FAILING, "http://127.0.0.1:8080/fail", method="POST")
        if status != 200:
            raise DemoError(f"could not make {FAILING} fail (status {status})")
        before = self._stats("frontend", CATALOG_CLUSTER.format(subset="v1"))
        self.findings.outlier = self._drive(self.requests)
        after = self._stats("frontend", CATALOG_CLUSTER.format(subset="v1"))
        prefix = f"cluster.{CATALOG_CLUSTER.format(subset='v1')}."
        self.findings.outlier["ejections"] = after.get(prefix + "outlier_detection.ejections_enforced_total", 0) - \
            before.get(prefix + "outlier_detection.ejections_enforced_total", 0)
        self.findings.outlier["ejected_now"] = after.get(prefix + "outlier_detection.ejections_active", 0)
        self.findings.outlier["retries"] = after.get(prefix + "upstream_rq_retry", 0) - before.get(prefix + "upstream_rq_retry", 0)
        self.progress("another batch while it is ejected")
        seen = self._inbound_requests(FAILING)
        self.findings.after_ejection = self._drive(self.requests)
        self.findings.failing_pod_requests = self._inbound_requests(FAILING) - seen

    # -- helpers ---------------------------------------------------------------------

    def _lab(self) -> Lab:
        if self.lab is None:
            raise DemoError("the lab is not up")
        return self.lab

    def _curl(self, pod: str, url: str, method: str = "GET", timeout: float = 5) -> tuple[int, str]:
        """(HTTP status, body) of a request made inside `pod`; status 0 when nothing answered."""
        done = self._lab().exec(self._pods[pod], ["curl", "-s", "-m", str(timeout), "-X", method, "-o", "-",
                                                  "-w", "\n%{http_code}", url], capture_output=True, timeout=timeout + 5)
        body, _, code = done.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def _drive(self, requests: int) -> dict[str, Any]:
        status, body = self._curl("frontend", f"http://127.0.0.1:8080/drive?n={requests}", timeout=120)
        if status != 200:
            raise DemoError(f"the frontend's traffic run failed (status {status}): {body[:300]}")
        result: dict[str, Any] = json.loads(body)
        return result

    def _stats(self, pod: str, contains: str) -> dict[str, int]:
        status, body = self._curl(pod, f"{ADMIN}/stats?filter={re.escape(contains)}")
        if status != 200:
            raise DemoError(f"{pod}'s sidecar admin did not answer /stats (status {status})")
        try:
            return dict(parse_stats(body).values)
        except StatsTextError as error:
            raise DemoError(f"{pod}'s sidecar admin /stats: {error}") from None

    def _inbound_requests(self, pod: str) -> int:
        return sum(v for k, v in self._stats(pod, "inbound_0.0.0.0_8080").items() if k.endswith(".downstream_rq_total"))

    def _issued(self) -> dict[str, str]:
        """What the agents' logs say they had signed for which pod (from the pods' CSRs)."""
        issued = {}
        for log in sorted(self._lab().dir.glob("node-*/agent.log")):
            for identity, pod in ISSUED.findall(log.read_text(errors="replace")):
                issued[pod] = identity
        return issued

    def _answers(self, pod: str) -> bool:
        return self._curl(pod, "http://127.0.0.1:8080/")[0] > 0

    def _catalog_endpoints_known(self) -> bool:
        status, body = self._curl("frontend", f"{ADMIN}/clusters")
        if status != 200:
            return False
        try:
            clusters = parse_clusters(body)
        except ClustersTextError as error:
            raise DemoError(f"the frontend's sidecar admin /clusters: {error}") from None
        hosts = {(name, host) for name, cluster in clusters.items() if name.startswith("outbound|8080|v")
                 for host in cluster.healthy_hosts()}
        return len(hosts) == 3

    def _meshctl(self, args: list[str]) -> str:
        env = {**os.environ, **self._lab().control_addresses()}
        done = subprocess.run([str(Path(sys.executable).parent / "meshctl"), *args], capture_output=True, text=True,
                              timeout=30, env=env)
        return done.stdout + done.stderr

    def _until(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise DemoError(f"timed out after {WAIT:.0f}s waiting until {what}")
