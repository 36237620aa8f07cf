"""`meshctl inject -f FILE|-` writes the injected manifests as YAML to stdout, idempotently."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from control.inject import PROXY_CONTAINER
from tests.control.control_process import MESHCTL

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: catalog, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  template:
    metadata: {labels: {app: catalog}}
    spec:
      containers: [{name: app, image: catalog:1}]
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{port: 80}]}
"""


def meshctl_inject(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHCTL, "inject", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_inject_adds_the_sidecar_first_and_passes_other_documents_through(tmp_path: Path) -> None:
    source = tmp_path / "app.yaml"
    source.write_text(MANIFEST)
    done = meshctl_inject("-f", str(source))
    assert done.returncode == 0, done.stderr
    deployment, service = yaml.safe_load_all(done.stdout)
    pod = deployment["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == [PROXY_CONTAINER, "app"]
    assert pod["metadata"]["annotations"]["sidecar.tulle.io/inject"] == "true"
    assert service == yaml.safe_load(MANIFEST.split("---\n")[1])


def test_injecting_its_own_output_changes_nothing() -> None:
    once = meshctl_inject("-f", "-", stdin=MANIFEST)
    twice = meshctl_inject("-f", "-", stdin=once.stdout)
    assert once.returncode == twice.returncode == 0
    assert twice.stdout == once.stdout


def test_a_pod_without_containers_is_an_error_naming_the_document() -> None:
    done = meshctl_inject("-f", "-", stdin="apiVersion: v1\nkind: Pod\nmetadata: {name: bare}\nspec: {}\n")
    assert done.returncode == 1
    assert "document 0 (Pod bare): the pod has no spec.containers" in done.stderr
