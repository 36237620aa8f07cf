"""tulle-proxy as a pod's sidecar in the mTLS lab of tests/mtls/harness.py: the same
bootstrap a real Envoy sidecar gets there (ADS from tulle-control, SDS from the node
agent's per-pod socket), so either side of a pair can be Tulle or Envoy."""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from netpolicy.agent.identity import PodRef
from tests.mtls.harness import Mesh, free_port

REPO = Path(__file__).resolve().parents[2]
TULLE = REPO / ".venv" / "bin" / "tulle-proxy"


def sidecar_bootstrap(mesh: Mesh, pod: PodRef, ip: str, sds_socket: Path, intercept: bool,
                      admin_port: int) -> dict[str, Any]:
    def grpc_cluster(name: str, address: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": address}}]}]}}

    metadata = {"NAME": pod.name, "NAMESPACE": pod.namespace}
    if not intercept:
        metadata["INTERCEPTION_MODE"] = "NONE"
    return {
        "node": {"id": f"sidecar~{ip}~{pod.name}.{pod.namespace}~{pod.namespace}.svc.cluster.local",
                 "cluster": pod.name, "metadata": metadata},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [
            grpc_cluster("xds-grpc", {"socket_address": {"address": "127.0.0.1", "port_value": mesh.xds_port}}),
            grpc_cluster("sds-grpc", {"pipe": {"path": str(sds_socket)}}),
        ]},
    }


class TulleSidecar:
    """tulle-proxy as a pod's sidecar, with the interface of tests.mtls.harness.Sidecar."""

    def __init__(self, mesh: Mesh, pod: PodRef, ip: str, sds_socket: Path, intercept: bool) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tulle-mtls-tulle-")
        d = Path(self._dir.name)
        port = free_port()
        self.admin = f"127.0.0.1:{port}"
        (d / "bootstrap.yaml").write_text(yaml.safe_dump(sidecar_bootstrap(mesh, pod, ip, sds_socket, intercept, port)))
        self._log = open(d / "proxy.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([str(TULLE), "-c", str(d / "bootstrap.yaml"), "--log-level", "warning"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.admin}/ready", timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tulle-proxy did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        return (Path(self._dir.name) / "proxy.log").read_text(errors="replace")[-4000:]

    def stats(self, contains: str) -> dict[str, int]:
        with urllib.request.urlopen(f"http://{self.admin}/stats?filter={contains}", timeout=5) as r:
            lines = r.read().decode().splitlines()
        out = {}
        for line in lines:
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def listening(self, name: str) -> bool:
        with urllib.request.urlopen(f"http://{self.admin}/config_dump", timeout=5) as r:
            return f'"{name}"' in r.read().decode()

    def close(self) -> None:
        try:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self._log.close()
            self._dir.cleanup()
