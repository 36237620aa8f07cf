"""The agent's identity socket with real processes in real network namespaces: the
kernel (SO_PEERCRED, then the caller's netns) says which pod is calling, and
tulle-control's CA signs that pod's identity only."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
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
from netpolicy.agent.identity import request_certificate
from proxy.tls.workload_identity import new_key_and_csr
from tests.ca.test_authority import csr_for
csr = csr_for(sys.argv[2]).decode() if len(sys.argv) > 2 else new_key_and_csr().csr_pem.decode()
print(json.dumps(asyncio.run(request_certificate(__import__("pathlib").Path(sys.argv[1]), csr))))
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
