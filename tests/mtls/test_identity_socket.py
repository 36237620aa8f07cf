"""The agent's identity socket with real processes in real network namespaces: the
kernel (SO_PEERCRED, then the caller's netns) says which pod is calling, and
tulle-control's CA signs that pod's identity only."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from control.ca.component import CaService
from control.plane import ControlPlane, ControlPlaneConfig
from netpolicy.agent.identity import CertificateAuthorityClient, IdentityServer
from tests.kernel import KernelResources

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
# What a sidecar runs: a key and CSR of its own, sent to the node agent's identity socket.
CLIENT = """
import asyncio, json, sys
from proxy.tls.identity_client import IdentityError, request_identity
from proxy.tls.workload_identity import new_key_and_csr
from tests.ca.test_authority import csr_for
csr = csr_for(sys.argv[2]) if len(sys.argv) > 2 else new_key_and_csr().csr_pem
try:
    issued = asyncio.run(request_identity(sys.argv[1], csr))
    print(json.dumps({"identity": issued.identity, "certChain": [issued.chain_pem.decode()],
                      "trustBundle": issued.trust_bundle_pem.decode()}))
except IdentityError as error:
    print(json.dumps({"error": str(error)}))
"""


def pod(namespace: str, name: str, sa: str, node: str = "node-1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app", "image": "app"}]}}


@dataclass
class Node:
    socket: Path
    netns: dict[str, str]  # pod name -> netns name
    kernel: KernelResources

    def ask(self, netns: str | None, *extra: str) -> dict[str, Any]:
        argv = [sys.executable, "-c", CLIENT, str(self.socket), *extra]
        if netns is None:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
        else:
            done = self.kernel.exec(netns, ["env", f"PYTHONPATH={ROOT}", *argv])
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer


@pytest.fixture
def node(kernel: KernelResources, tmp_path: Path) -> Iterator[Node]:
    web, db, elsewhere = kernel.netns("web"), kernel.netns("db"), kernel.netns("other")
    attached = [(f"/run/netns/{web}", "shop", "web-1"), (f"/run/netns/{db}", "data", "db-1")]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "run" / "control.sock", listen=()),
                         [CaService()])

    async def start() -> tuple[IdentityServer, CertificateAuthorityClient]:
        await plane.start()
        await plane.registry.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in ("shop", "data")])
        await plane.registry.apply([pod("shop", "web-1", "frontend"), pod("data", "db-1", "postgres"),
                                    pod("shop", "elsewhere", "frontend", node="node-2")])
        ca = CertificateAuthorityClient("node-1", f"unix:{tmp_path}/run/control.sock")

        async def pods() -> list[tuple[str, str, str]]:
            return attached

        server = IdentityServer(tmp_path / "agent" / "identity.sock", ca, pods)
        await server.start()
        return server, ca

    server, ca = run(start())
    try:
        yield Node(server.path, {"web-1": web, "db-1": db, "unattached": elsewhere}, kernel)
    finally:
        run(server.stop())
        run(ca.close())
        run(plane.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_a_csr_from_inside_a_pod_netns_gets_that_pods_identity(node: Node) -> None:
    answer = node.ask(node.netns["web-1"])
    assert answer["identity"] == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert answer["certChain"] and "BEGIN CERTIFICATE" in str(answer["trustBundle"])


def test_each_pod_gets_its_own_identity(node: Node) -> None:
    assert node.ask(node.netns["db-1"])["identity"] == "spiffe://cluster.local/ns/data/sa/postgres"


def test_a_pod_cannot_get_another_pods_identity(node: Node) -> None:
    answer = node.ask(node.netns["db-1"], "spiffe://cluster.local/ns/shop/sa/frontend")
    assert "identity" not in answer
    assert "may only have spiffe://cluster.local/ns/data/sa/postgres" in answer["error"]


def test_a_process_in_no_attached_pod_gets_nothing(node: Node) -> None:
    assert "not in the network namespace of any pod" in node.ask(node.netns["unattached"])["error"]
    assert "not in the network namespace of any pod" in node.ask(None)["error"]


# A sidecar whose TLS listener takes its certificate and trust bundle from SDS names
# `default` and `ROOTCA`: with --identity-socket, tulle-proxy makes them itself.
SIDECAR_BOOTSTRAP = {
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
    "static_resources": {
        "listeners": [{
            "name": "mtls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15443}},
            "filter_chains": [{
                "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "mtls", "cluster": "app"}}],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": {
                            "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
                            "resource_api_version": "V3"}}],
                        "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": {
                            "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
                            "resource_api_version": "V3"}}}}},
            }],
        }],
        "clusters": [
            {"name": "app", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": "app",
             "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                 "address": "127.0.0.1", "port_value": 8080}}}}]}]}},
            {"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
             "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                 "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                 "explicit_http_config": {"http2_protocol_options": {}}}},
             "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                 "address": {"pipe": {"path": "/nonexistent/sds.sock"}}}}]}]}},
        ],
    },
}
ADMIN_SECRETS = ("import json, urllib.request; print(urllib.request.urlopen("
                 "'http://127.0.0.1:15000/config_dump', timeout=2).read().decode())")


def test_tulle_proxy_with_the_identity_socket_makes_its_own_key_and_serves_its_pods_identity(
        node: Node, tmp_path: Path) -> None:
    from control.xds.proxy_secrets import secret_rows

    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(SIDECAR_BOOTSTRAP))
    proxy = node.kernel.spawn(node.netns["web-1"], [str(Path(sys.executable).parent / "tulle-proxy"), "-c", str(bootstrap),
                                                    "--identity-socket", str(node.socket)])
    deadline = time.monotonic() + 30
    while True:
        done = node.kernel.exec(node.netns["web-1"], [sys.executable, "-c", ADMIN_SECRETS])
        if done.returncode == 0:
            break
        assert proxy.poll() is None and time.monotonic() < deadline, done.stderr
        time.sleep(0.2)
    rows = {row[0]: row for row in secret_rows(json.loads(done.stdout))[1:]}
    assert rows["default"][1:3] == ["Cert Chain", "spiffe://cluster.local/ns/shop/sa/frontend"]
    assert rows["ROOTCA"][1] == "Trust Bundle"
    listening = node.kernel.exec(node.netns["web-1"], ["ss", "-ltnH", "sport = :15443"])
    assert "15443" in listening.stdout  # the TLS listener warmed with the proxy-made secrets
