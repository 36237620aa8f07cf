"""`meshctl inject`'s transformation: what it adds, what it leaves alone, idempotence."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from control.inject import InjectionConfig, InjectionError, inject

MANIFESTS = list(yaml.safe_load_all("""
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers: [{name: app, image: shop/web:1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: catalog, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  template:
    metadata: {labels: {app: catalog}}
    spec:
      containers: [{name: app, image: shop/catalog:1}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{port: 80}], selector: {app: catalog}}
"""))


def test_the_sidecar_comes_first_so_it_starts_before_the_app() -> None:
    pod = inject(MANIFESTS)[0]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["tulle-proxy", "app"]
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 15000}


def test_pod_templates_of_workloads_are_injected_and_their_volumes_kept() -> None:
    template = inject(MANIFESTS)[1]["spec"]["template"]
    assert template["metadata"]["annotations"]["sidecar.tulle.io/inject"] == "true"
    assert [v["name"] for v in template["spec"]["volumes"]] == ["data", "tulle-bootstrap", "tulle-agent-socket"]


def test_documents_without_pods_pass_through_unchanged() -> None:
    assert inject(MANIFESTS)[2] == MANIFESTS[2]


def test_injecting_twice_equals_injecting_once() -> None:
    once = inject(MANIFESTS)
    assert inject(copy.deepcopy(once)) == once


def test_reinjection_picks_up_a_new_image_without_duplicating() -> None:
    newer = inject(inject(MANIFESTS), InjectionConfig(image="tulle/proxy:0.2.0"))[0]
    proxies = [c for c in newer["spec"]["containers"] if c["name"] == "tulle-proxy"]
    assert [c["image"] for c in proxies] == ["tulle/proxy:0.2.0"]
    assert json.loads(newer["metadata"]["annotations"]["sidecar.tulle.io/status"])["image"] == "tulle/proxy:0.2.0"


@pytest.mark.parametrize("opt_out", [
    {"metadata": {"name": "p", "annotations": {"sidecar.tulle.io/inject": "false"}}},
    {"metadata": {"name": "p"}, "spec": {"hostNetwork": True}},
])
def test_pods_that_opt_out_or_use_the_host_network_are_left_alone(opt_out: dict) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": opt_out["metadata"],
           "spec": {"containers": [{"name": "app"}], **opt_out.get("spec", {})}}
    assert inject([pod]) == [pod]


def test_a_workload_without_a_pod_template_is_an_error_naming_it() -> None:
    with pytest.raises(InjectionError, match=r"document 0 \(Deployment broken\): missing spec.template"):
        inject([{"kind": "Deployment", "metadata": {"name": "broken"}, "spec": {}}])
