"""End to end through the real processes: manifests applied with `meshctl apply` to a
running tulle-control reach a real Envoy over xDS, and `meshctl proxy-status` /
`proxy-config` show what that Envoy holds."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.control.control_process import ControlProcess, start_control
from tests.ports import free_port
from tests.xds.harness import ROOT, Envoy, Upstream, eventually, http_get

MESHCTL = ROOT / ".venv" / "bin" / "meshctl"
NODE_ID = "sidecar~127.0.0.1~client-0.default~default.svc.cluster.local"


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[ControlProcess, str]]:
    process = start_control(tmp_path / "control", "--xds-listen", "127.0.0.1:0")
    try:
        log = (tmp_path / "control" / "tulle-control.log").read_text()
        xds = next(line.split()[-1] for line in log.splitlines() if line.startswith("tulle-control xds:"))
        yield process, xds
    finally:
        process.stop()


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    made = [Upstream("reviews-v1", "127.0.0.31"), Upstream("reviews-v2", "127.0.0.32")]
    try:
        yield made
    finally:
        for u in made:
            u.close()


def meshctl(*args: str) -> str:
    done = subprocess.run([str(MESHCTL), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_applied_manifests_reach_envoy_and_proxy_status_shows_it(
    control: tuple[ControlProcess, str], upstreams: list[Upstream], tmp_path: Path
) -> None:
    process, xds = control
    port = free_port()
    manifests = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": port, "targetPort": "http"}]}},
        *(
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": u.name, "namespace": "default", "labels": {"app": "reviews", "version": u.name[-2:]}},
             "spec": {"containers": [{"name": "app", "image": "reviews", "ports": [{"name": "http", "containerPort": u.port}]}]},
             "status": {"podIP": u.host}}
            for u in upstreams
        ),
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"hosts": ["reviews"], "http": [
             {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
             {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}},
    ]
    path = tmp_path / "reviews.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    meshctl("-s", process.address, "apply", "-f", str(path))

    envoy = Envoy(int(xds.rsplit(":", 1)[1]), "DELTA_GRPC", NODE_ID, {"INTERCEPTION_MODE": "NONE"})
    try:
        host = "reviews.default"
        assert eventually(lambda: http_get(port, "/", host=host) == (200, "reviews-v1"))
        assert http_get(port, "/", host=host, headers={"end-user": "jason"}) == (200, "reviews-v2")

        status = meshctl("proxy-status", "--xds", xds)
        assert NODE_ID in status and "SYNCED" in status
        endpoints = meshctl("proxy-config", "client-0", "endpoints", "--xds", xds)
        assert all(f"{u.host}:{u.port}" in endpoints for u in upstreams)

        meshctl("-s", process.address, "delete", "virtualservice", "reviews")
        eventually(lambda: "end-user" not in str(envoy.config_dump("dynamic_route_configs")))
    finally:
        envoy.close()
