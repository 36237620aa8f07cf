"""tulle-agent's workload identity follows the node's attachments: an SDS socket per
attached pod appears beside the agent socket (serving that pod's certificate) and goes
when the pod is detached."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from control.ca.component import CaService
from control.plane import ControlPlane, ControlPlaneConfig
from netpolicy.agent.identity_service import IdentityConfig, NodeIdentityService
from netpolicy.agent.sds import SECRET_TYPE
from tests.mtls.test_sds import unpack


@dataclass
class _Config:
    node: str
    socket_path: Path


@dataclass
class Agent:
    """The part of NodeAgent identity uses: its node, its socket, and the
    `attachments` operation run on its worker thread."""

    config: _Config
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    pods: list[tuple[str, str]] = field(default_factory=list)

    def run(self, op: str, request: Any) -> dict[str, Any]:
        assert op == "attachments"
        return {"attachments": [{"netns": "/proc/self/ns/net", "podNamespace": ns, "podName": name}
                                for ns, name in self.pods]}


def test_sds_sockets_follow_the_attached_pods(tmp_path: Path) -> None:
    async def main() -> None:
        plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "run" / "control.sock", listen=()),
                             [CaService()])
        await plane.start()
        agent = Agent(_Config("node-1", tmp_path / "agent" / "agent.sock"), pods=[("default", "web-1")])
        service = NodeIdentityService(agent, IdentityConfig(f"unix:{tmp_path}/run/control.sock"))  # type: ignore[arg-type]
        try:
            await plane.registry.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1"},
                                         "spec": {"nodeName": "node-1", "containers": [{"name": "a", "image": "a"}]}}])
            await service.start()
            await service.reconcile()
            socket = tmp_path / "agent" / "sds" / "default" / "web-1" / "socket"
            assert (tmp_path / "agent" / "identity.sock").exists()
            async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
                async def subscribe() -> Any:
                    yield discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=["default"])
                    await asyncio.sleep(30)

                stream = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(subscribe())
                secret = unpack(await stream.read())["default"]
                stream.cancel()
            assert secret.tls_certificate.private_key.inline_bytes
            agent.pods.clear()
            await service.reconcile()
            assert not socket.exists()
        finally:
            await service.stop()
            await plane.stop()
            agent.worker.shutdown()

    asyncio.run(main())
