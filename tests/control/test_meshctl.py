"""meshctl against a real tulle-control process: upstream manifests round-trip through
`apply -f` and `get -o yaml`; tables, errors and exit codes are what scripts expect."""

from __future__ import annotations

import copy
import io
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from control import resources
from control.meshctl.cli import FAILED, OK, UNREACHABLE, USAGE, main
from tests.control.control_process import MESHCTL, ControlProcess, control_process

MANIFESTS = Path(__file__).parent / "manifests"
SERVER_OWNED = ("uid", "resourceVersion", "creationTimestamp", "generation")


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlProcess]:
    with control_process(tmp_path_factory.mktemp("control")) as process:
        yield process


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def meshctl(control: ControlProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    def run(*args: str, stdin: str = "") -> Result:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(["--server", control.address, *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for key in SERVER_OWNED:
        out["metadata"].pop(key, None)
    return out


def upstream_documents() -> list[dict[str, Any]]:
    return [d for path in sorted(MANIFESTS.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def test_upstream_manifests_round_trip_through_apply_and_get_yaml(meshctl: Any) -> None:
    applied = meshctl("apply", "-f", str(MANIFESTS))
    assert applied.code == OK, applied.err
    documents = upstream_documents()
    assert {d["kind"] for d in documents} >= {"NetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy",
                                            "VirtualService", "DestinationRule", "PeerAuthentication",
                                            "AuthorizationPolicy"}
    for document in documents:
        kind, meta = document["kind"], document["metadata"]
        namespaced = resources.BY_NAME[kind].namespaced
        args = ["get", kind, meta["name"], "-o", "yaml"]
        if namespaced:
            args += ["-n", meta.get("namespace", "default")]
        got = meshctl(*args)
        assert got.code == OK, got.err
        stored = yaml.safe_load(got.out)
        assert all(stored["metadata"][k] for k in SERVER_OWNED)
        expected = copy.deepcopy(document)
        if namespaced:
            expected["metadata"].setdefault("namespace", "default")
        assert without_server_fields(stored) == expected


def test_apply_reports_each_object_kubectl_style_and_then_unchanged(meshctl: Any) -> None:
    path = str(MANIFESTS / "networkpolicy-default-deny-ingress.yaml")
    meshctl("delete", "-f", path, "--ignore-not-found")
    assert meshctl("apply", "-f", path).out == "networkpolicy.networking.k8s.io/default-deny-ingress created\n"
    assert meshctl("apply", "-f", path).out == "networkpolicy.networking.k8s.io/default-deny-ingress unchanged\n"


def test_apply_reads_standard_input(meshctl: Any) -> None:
    manifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: from-stdin\n"
    result = meshctl("apply", "-f", "-", stdin=manifest)
    assert (result.code, result.out) == (OK, "namespace/from-stdin created\n")


def test_an_invalid_manifest_fails_with_the_field_path_and_exit_code_1(meshctl: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: half-applied}\n---\n"
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
        "spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n"
    )
    result = meshctl("apply", "-f", str(bad))
    assert result.code == FAILED
    assert result.err.strip() == (
        'The NetworkPolicy "x" is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: '
        "must be between 1 and 65535, inclusive"
    )
    assert meshctl("get", "ns", "half-applied").code == FAILED  # nothing half-applied


def test_unparseable_yaml_names_the_file(meshctl: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("kind: [unclosed\n")
    result = meshctl("apply", "-f", str(bad))
    assert result.code == FAILED and f"error parsing {bad}" in result.err


def test_get_prints_a_kubectl_table(meshctl: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: table-web}\n"
        "spec: {selector: {app: table-web}, ports: [{port: 80, protocol: TCP}]}\n"
    )
    assert meshctl("apply", "-f", str(manifest)).code == OK
    table = meshctl("get", "svc", "table-web").out.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    name, kind, ip, external, ports, _age = table[1].split()
    assert (name, kind, external, ports) == ("table-web", "ClusterIP", "<none>", "80/TCP")
    assert ip.startswith("10.96.")
    wide = meshctl("get", "services", "-o", "wide").out.splitlines()
    assert "SELECTOR" in wide[0].split() and any("app=table-web" in line for line in wide)


def test_get_filters_by_label_selector_and_lists_every_namespace(meshctl: Any) -> None:
    manifest = (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: sel-ns}\n---\n"
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sel-a, namespace: sel-ns, labels: {tier: web}}\n"
        "spec: {podSelector: {}}\n---\n"
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sel-b, namespace: sel-ns, labels: {tier: db}}\n"
        "spec: {podSelector: {}}\n"
    )
    assert meshctl("apply", "-f", "-", stdin=manifest).code == OK
    names = meshctl("get", "netpol", "-n", "sel-ns", "-l", "tier=web", "-o", "name").out.split()
    assert names == ["networkpolicy.networking.k8s.io/sel-a"]
    every = meshctl("get", "netpol", "-A").out.splitlines()
    assert every[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == ["sel-ns", "sel-b"] for line in every)


def test_get_of_a_missing_object_exits_1_with_kubectls_message(meshctl: Any) -> None:
    result = meshctl("get", "networkpolicy", "nope")
    assert result.code == FAILED
    assert result.err.strip() == 'Error from server (NotFound): networkpolicies.networking.k8s.io "nope" not found'


def test_get_of_an_unknown_kind_exits_1(meshctl: Any) -> None:
    result = meshctl("get", "gateways")
    assert result.code == FAILED and 'doesn\'t have a resource type "gateways"' in result.err


def test_delete_by_kind_and_name_then_by_file(meshctl: Any) -> None:
    path = str(MANIFESTS / "istio-reviews-destinationrule.yaml")
    assert meshctl("apply", "-f", path).code == OK
    deleted = meshctl("delete", "dr", "reviews")
    assert (deleted.code, deleted.out) == (OK, 'destinationrule.networking.istio.io "reviews" deleted\n')
    again = meshctl("delete", "-f", path)
    assert again.code == FAILED and "NotFound" in again.err
    assert meshctl("delete", "-f", path, "--ignore-not-found").code == OK


def test_describe_shows_a_service_with_its_endpoints(meshctl: Any) -> None:
    manifest = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: desc-web}\n"
        "spec: {selector: {app: desc-web}, ports: [{port: 80}]}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: desc-web-1, labels: {app: desc-web}}\n"
        "spec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.3.3}\n"
    )
    assert meshctl("apply", "-f", "-", stdin=manifest).code == OK
    for _ in range(100):
        text = meshctl("describe", "svc", "desc-web").out
        if "10.244.3.3:80" in text:
            break
    assert text.startswith("Name:         desc-web\nNamespace:    default\n")
    assert "Endpoints:    10.244.3.3:80" in text


def test_usage_errors_exit_2(meshctl: Any) -> None:
    assert meshctl("apply").code == USAGE
    assert meshctl("frobnicate").code == USAGE


def test_version_shows_client_and_server(meshctl: Any) -> None:
    lines = meshctl("version").out.splitlines()
    assert lines[0].startswith("Client Version: ") and lines[1].startswith("Server Version: ")
    assert lines[2].startswith("Server Store: sqlite:")


def test_the_installed_command_honours_tulle_server_and_exits_3_when_unreachable(control: ControlProcess) -> None:
    env = {**os.environ, "TULLE_SERVER": control.address}
    reached = subprocess.run([str(MESHCTL), "get", "ns", "default", "-o", "name"], env=env, capture_output=True, text=True)
    assert (reached.returncode, reached.stdout) == (OK, "namespace/default\n")
    unreachable = subprocess.run([str(MESHCTL), "--server", "127.0.0.1:1", "get", "ns"], capture_output=True, text=True)
    assert unreachable.returncode == UNREACHABLE
    assert "cannot reach tulle-control at 127.0.0.1:1" in unreachable.stderr


def test_get_watch_prints_the_listing_then_each_change(control: ControlProcess, meshctl: Any) -> None:
    watcher = subprocess.Popen([str(MESHCTL), "--server", control.address, "get", "ns", "-w", "-l", "watched=yes"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        # Whether the apply lands before the listing or after it, the object is printed once.
        manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: watched-ns, labels: {watched: 'yes'}}\n"
        assert meshctl("apply", "-f", "-", stdin=manifest).code == OK
        lines: list[str] = []
        while not any("watched-ns" in line for line in lines):
            lines.append(watcher.stdout.readline())
        assert lines[-1].split()[:2] == ["watched-ns", "Active"]
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_describe_pod_shows_its_identity_mtls_mode_and_authorization(meshctl: Any) -> None:
    manifest = (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: desc-db, labels: {app: desc-db},"
        " annotations: {sidecar.tulle.io/inject: 'true'}}\n"
        "spec: {serviceAccountName: db, containers: [{name: c, image: i, ports: [{containerPort: 5432}]}]}\n---\n"
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n"
        "spec: {mtls: {mode: STRICT}}\n---\n"
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: desc-db-deny}\n"
        "spec: {selector: {matchLabels: {app: desc-db}}, action: DENY, rules: [{}]}\n"
    )
    assert meshctl("apply", "-f", "-", stdin=manifest).code == OK
    text = meshctl("describe", "pod", "desc-db").out
    assert "Identity:     spiffe://cluster.local/ns/default/sa/db\n" in text
    assert "Sidecar:      yes\n" in text
    assert "mTLS:         STRICT (ports 5432: STRICT)\n" in text
    assert "Authorization: DENY default/desc-db-deny\n" in text


def test_describe_spells_field_names_as_words_and_keeps_label_keys_as_written() -> None:
    from control.meshctl.describe import describe

    text = describe({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "p", "namespace": "default", "uid": "u", "resourceVersion": "3"},
                     "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "db"}},
                              "policyTypes": ["Ingress"]}})
    assert "  Pod Selector:\n    Match Labels:\n      app.kubernetes.io/name:  db\n" in text
    assert "  Policy Types:\n    - Ingress\n" in text
    assert "  Resource Version:  3\n" in text


def test_get_of_several_kinds_prints_a_table_per_kind(meshctl: Any) -> None:
    manifest = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: multi-web}\n"
        "spec: {selector: {app: multi-web}, ports: [{port: 80}]}\n---\n"
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: multi-web}\nspec: {podSelector: {}}\n"
    )
    assert meshctl("apply", "-f", "-", stdin=manifest).code == OK
    out = meshctl("get", "svc,netpol").out
    services, policies = out.split("\n\n")
    assert services.splitlines()[0].split()[:2] == ["NAME", "TYPE"]
    assert any(line.startswith("service/multi-web ") for line in services.splitlines())
    assert policies.splitlines()[0].split()[:2] == ["NAME", "POD-SELECTOR"]
    assert meshctl("get", "svc,ep", "-w").code == USAGE


def test_apply_with_a_namespace_places_objects_that_name_none(meshctl: Any) -> None:
    manifest = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-flag}\n---\n"
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: in-flag-ns}\nspec: {podSelector: {}}\n")
    assert meshctl("apply", "-n", "ns-flag", "-f", "-", stdin=manifest).code == OK
    assert meshctl("get", "netpol", "in-flag-ns", "-n", "ns-flag", "-o", "name").out == (
        "networkpolicy.networking.k8s.io/in-flag-ns\n")
    elsewhere = manifest.replace("{name: in-flag-ns}", "{name: in-flag-ns, namespace: default}")
    mismatch = meshctl("apply", "-n", "ns-flag", "-f", "-", stdin=elsewhere)
    assert mismatch.code == FAILED and 'does not match the namespace "ns-flag"' in mismatch.err
