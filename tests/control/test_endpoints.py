"""A Service's Endpoints from its selector and Pods (control/endpoints.py, pure)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from control.endpoints import compute_endpoints, selects_pods


def service(selector: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}], **spec}
    if selector is not None:
        body["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": body}


def pod(name: str, ip: str | None, labels: dict[str, str] | None = None, namespace: str = "default",
        ready: str | None = None, phase: str | None = None, node: str | None = None,
        ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if ip:
        status["podIP"] = ip
    if ready:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    if phase:
        status["phase"] = phase
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "i", "ports": ports or []}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels if labels is not None else {"app": "web"}},
            "spec": spec, "status": status}


def test_matching_pods_with_ips_become_addresses_sorted_by_ip() -> None:
    endpoints = compute_endpoints(service({"app": "web"}), [pod("b", "10.244.0.10", node="n1"), pod("a", "10.244.0.9")])
    assert endpoints["subsets"] == [{
        "addresses": [
            {"ip": "10.244.0.9", "targetRef": {"kind": "Pod", "name": "a", "namespace": "default"}},
            {"ip": "10.244.0.10", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "b", "namespace": "default"}},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }]
    assert endpoints["metadata"] == {"name": "web", "namespace": "default"}


def test_pods_without_ip_other_labels_other_namespace_or_finished_are_left_out() -> None:
    pods = [pod("no-ip", None), pod("other", "10.0.0.2", labels={"app": "db"}), pod("elsewhere", "10.0.0.3", namespace="prod"),
            pod("done", "10.0.0.4", phase="Succeeded"), pod("failed", "10.0.0.5", phase="Failed")]
    assert compute_endpoints(service({"app": "web"}), pods)["subsets"] == []


def test_unready_pods_go_to_not_ready_addresses() -> None:
    [subset] = compute_endpoints(service({"app": "web"}), [pod("a", "10.0.0.1", ready="False"), pod("b", "10.0.0.2", ready="True")])["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["10.0.0.2"]
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["10.0.0.1"]


def test_publish_not_ready_addresses_counts_every_pod_ready() -> None:
    svc = service({"app": "web"}, publishNotReadyAddresses=True)
    [subset] = compute_endpoints(svc, [pod("a", "10.0.0.1", ready="False")])["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["10.0.0.1"] and "notReadyAddresses" not in subset


def test_named_target_ports_resolve_per_pod_and_group_pods_by_port() -> None:
    svc = service({"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    pods = [pod("old", "10.0.0.1", ports=[{"name": "web", "containerPort": 8080}]),
            pod("new", "10.0.0.2", ports=[{"name": "web", "containerPort": 9090}]),
            pod("none", "10.0.0.3", ports=[{"name": "metrics", "containerPort": 9100}])]
    subsets = compute_endpoints(svc, pods)["subsets"]
    assert [(s["addresses"][0]["ip"], s["ports"][0]["port"]) for s in subsets] == [("10.0.0.1", 8080), ("10.0.0.2", 9090)]


def test_target_port_defaults_to_the_service_port() -> None:
    svc = service({"app": "web"}, ports=[{"port": 80, "protocol": "UDP"}])
    [subset] = compute_endpoints(svc, [pod("a", "10.0.0.1")])["subsets"]
    assert subset["ports"] == [{"port": 80, "protocol": "UDP"}]


def test_a_workload_outside_any_node_is_taken_as_applied() -> None:
    [subset] = compute_endpoints(service({"app": "web"}), [pod("vm-1", "192.168.50.7")])["subsets"]
    assert subset["addresses"][0] == {"ip": "192.168.50.7", "targetRef": {"kind": "Pod", "name": "vm-1", "namespace": "default"}}


def test_only_services_with_a_selector_have_managed_endpoints() -> None:
    assert selects_pods(service({"app": "web"}))
    assert not selects_pods(service(None))
    assert not selects_pods(service({}))
    assert not selects_pods(service({"app": "web"}, type="ExternalName"))


def test_the_same_inputs_give_the_same_document_whatever_the_pod_order() -> None:
    pods = [pod(f"p{i}", f"10.0.0.{i}") for i in range(1, 6)]
    assert compute_endpoints(service({"app": "web"}), pods) == compute_endpoints(service({"app": "web"}), pods[::-1])


@given(st.lists(st.tuples(st.integers(1, 250), st.sampled_from(["web", "db"]), st.sampled_from([None, "True", "False"])),
                max_size=30, unique_by=lambda t: t[0]))
def test_every_backing_pod_appears_exactly_once_ready_or_not(specs: list[tuple[int, str, str | None]]) -> None:
    pods = [pod(f"p{n}", f"10.0.0.{n}", labels={"app": app}, ready=ready) for n, app, ready in specs]
    endpoints = compute_endpoints(service({"app": "web"}), pods)
    listed = [a["ip"] for s in endpoints["subsets"] for a in s.get("addresses", []) + s.get("notReadyAddresses", [])]
    assert sorted(listed) == sorted(f"10.0.0.{n}" for n, app, _ in specs if app == "web")
    unready = {a["ip"] for s in endpoints["subsets"] for a in s.get("notReadyAddresses", [])}
    assert unready == {f"10.0.0.{n}" for n, app, ready in specs if app == "web" and ready == "False"}
