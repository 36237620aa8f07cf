"""Workload identity in tulle-agent: the identity socket and one SDS socket per pod the
node attached, kept in step with the node's attachments.

Theory of operation: every `RECONCILE_INTERVAL` the attachments (the agent's own
`attachments` operation, on its datapath thread) are compared with the SDS servers
running; a server is started for each new pod (`<sds dir>/<namespace>/<pod>/socket`,
by default beside the agent socket)
and stopped for each pod gone. An SDS server asks tulle-control for a certificate only
when its sidecar first connects, so pods without a sidecar cost the CA nothing.
Certificates come from tulle-control's CertificateService at `ca_address` (by default
its root-only unix socket on this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from netpolicy.agent.agent import NodeAgent
from netpolicy.agent.control_link import ControlTls
from netpolicy.agent.identity import (
    DEFAULT_CONTROL_SOCKET,
    CertificateAuthorityClient,
    IdentityServer,
    PodRef,
    attest_pid,
)
from netpolicy.agent.sds import PodSdsServer, WorkloadSecrets, pod_socket
from netpolicy.agent.server import serve

log = logging.getLogger("tulle.agent.identity")

RECONCILE_INTERVAL = 1.0


@dataclass(frozen=True)
class IdentityConfig:
    """Where identity is served; paths default to beside the agent's own socket
    (`identity.sock`, `sds/`), so that agents of several lab nodes never share one."""

    ca_address: str = DEFAULT_CONTROL_SOCKET  # "" turns workload identity off
    ca_tls: ControlTls | None = None  # the agent certificate, for a HOST:PORT ca_address
    identity_socket: Path | None = None
    sds_dir: Path | None = None


class NodeIdentityService:
    def __init__(self, agent: NodeAgent, config: IdentityConfig) -> None:
        self._agent = agent
        self._config = config
        base = agent.config.socket_path.parent
        self._sds_dir = config.sds_dir or base / "sds"
        self._ca = CertificateAuthorityClient(agent.config.node, config.ca_address, config.ca_tls)
        self._identity = IdentityServer(config.identity_socket or base / "identity.sock", self._ca, self.attached_pods)
        self._sds: dict[PodRef, PodSdsServer] = {}
        # The periodic loop and an explicit reconcile may overlap; without this, both
        # could start a server for one pod and the loser would unlink the winner's socket.
        self._reconciling = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def attached_pods(self) -> list[tuple[str, str, str]]:
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._agent.worker, self._agent.run, "attachments", {})
        return [(a["netns"], a.get("podNamespace") or "", a.get("podName") or "") for a in reply.get("attachments", ())]

    async def _attest(self, pid: int) -> PodRef:
        return await attest_pid(pid, self.attached_pods)

    async def start(self) -> None:
        await self._identity.start()
        self._task = asyncio.create_task(self._reconcile_forever(), name="identity-reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for server in self._sds.values():
            await server.stop()
        await self._identity.stop()
        await self._ca.close()

    async def reconcile(self) -> None:
        async with self._reconciling:
            pods = {PodRef(ns, name) for _, ns, name in await self.attached_pods() if ns and name}
            for pod in pods - self._sds.keys():
                server = PodSdsServer(pod_socket(self._sds_dir, pod), WorkloadSecrets(pod, self._ca), self._attest)
                await server.start()
                self._sds[pod] = server
                log.info("SDS for pod %s on %s", pod, server.path)
            for pod in self._sds.keys() - pods:
                await self._sds.pop(pod).stop()

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("identity reconcile failed")
            await asyncio.sleep(RECONCILE_INTERVAL)


async def serve_with_identity(agent: NodeAgent, config: IdentityConfig) -> None:
    """The agent socket (`server.serve`), plus workload identity unless turned off."""
    if not config.ca_address:
        await serve(agent)
        return
    identity = NodeIdentityService(agent, config)
    await identity.start()
    try:
        await serve(agent)
    finally:
        await identity.stop()
