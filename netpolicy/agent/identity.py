"""Workload identity on the node: which pod is calling, and its certificate from
tulle-control's CA.

The model (see control/ca/attestation.py for tulle-control's half):
- A workload never says who it is. It connects to the agent's identity socket (a
  unix socket reachable from pods, mode 0666: reaching it proves nothing) and the
  agent asks the kernel: SO_PEERCRED gives the caller's pid, /proc/<pid>/ns/net its
  network namespace, and that namespace (device and inode of the nsfs file) must be
  one the agent itself created for a pod at CNI ADD. That pod is the caller; a process
  in no pod's namespace (the node itself, an unknown container) gets nothing.
- The agent forwards (its node, that pod, the CSR) to tulle-control's
  CertificateService, which checks that the pod runs on this node and signs the pod's
  own SPIFFE ID only.

Protocol of the identity socket (one request per connection, like the agent socket):
    request  {"csr": "<PEM CSR>", "ttlSeconds": 0}
    reply    {"identity": "spiffe://…", "certChain": ["<PEM leaf>", …], "trustBundle": "<PEM>"}
             or {"error": "…"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from netpolicy.agent.control_credentials import CONTROL_SERVER_NAME, ControlTls
from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc

log = logging.getLogger("tulle.agent.identity")

MAX_REQUEST = 64 << 10
DEFAULT_CONTROL_SOCKET = "unix:/run/tulle/control.sock"

NetnsId = tuple[int, int]  # (st_dev, st_ino) of an nsfs file


class NotAttested(PermissionError):
    """The caller is not a pod this agent attached; the message says what it is."""


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Issued:
    identity: str
    cert_chain: tuple[str, ...]  # PEM, leaf first
    trust_bundle: str


def netns_id(path: str | Path) -> NetnsId:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def attest(peer: NetnsId, pods: Iterable[tuple[NetnsId, PodRef]]) -> PodRef:
    """The pod whose network namespace the caller is in (pure: the kernel facts are
    gathered by the caller)."""
    for netns, pod in pods:
        if netns == peer:
            return pod
    raise NotAttested("the caller is not in the network namespace of any pod this node attached")


# (netns path, pod namespace, pod name) of every pod the agent attached.
AttachedPods = Callable[[], Awaitable[list[tuple[str, str, str]]]]


async def attest_pid(pid: int, attached: AttachedPods) -> PodRef:
    try:
        peer = netns_id(f"/proc/{pid}/ns/net")
    except OSError as error:
        raise NotAttested(f"cannot read the network namespace of pid {pid}: {error}") from None
    known = []
    for path, namespace, name in await attached():
        with contextlib.suppress(OSError):  # a pod torn down meanwhile
            if namespace and name:
                known.append((netns_id(path), PodRef(namespace, name)))
    return attest(peer, known)


class CertificateAuthorityClient:
    """tulle-control's CertificateService, acting for one node: over the control plane's
    root-only unix socket by default, else over mTLS with the agent certificate in `tls`
    (the channel is reopened after that certificate is renewed)."""

    def __init__(self, node: str, target: str = DEFAULT_CONTROL_SOCKET, tls: ControlTls | None = None) -> None:
        self.node = node
        self._target = target
        self._tls = tls if not target.startswith("unix:") else None
        self._generation = -1
        self._channel: grpc.aio.Channel | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._stub = self._current_stub()

    def _current_stub(self) -> ca_pb2_grpc.CertificateServiceStub:
        tls = self._tls
        if self._channel is not None and (tls is None or tls.generation == self._generation):
            return self._stub
        old = self._channel
        if tls is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        else:
            # Over mTLS the server must be tulle-control (a DNS name of its serving certificate).
            self._generation = tls.generation
            self._channel = grpc.aio.secure_channel(self._target, tls.credentials(),
                                                    options=[("grpc.ssl_target_name_override", CONTROL_SERVER_NAME)])
        self._stub = ca_pb2_grpc.CertificateServiceStub(self._channel)
        if old is not None:   # calls in flight on it may finish
            closing = asyncio.get_running_loop().create_task(old.close(grace=10))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return self._stub

    async def sign(self, pod: PodRef, csr_pem: str, ttl_seconds: int = 0) -> Issued:
        response = await self._current_stub().CreateCertificate(ca_pb2.CertificateRequest(
            csr=csr_pem, validity_duration=ttl_seconds, node=self.node,
            pod_namespace=pod.namespace, pod_name=pod.name), timeout=10)
        return Issued(response.identity, tuple(response.cert_chain), response.trust_bundle)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class IdentityServer:
    """The identity socket: a CSR in, the calling pod's certificate out."""

    def __init__(self, path: Path, ca: CertificateAuthorityClient, attached: AttachedPods) -> None:
        self.path = path
        self._ca = ca
        self._attached = attached
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._on_connection, path=str(self.path), backlog=128)
        # Reachable from every pod on purpose: the kernel, not the file mode, says who calls.
        os.chmod(self.path, 0o666)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader, writer.get_extra_info("socket"))
            writer.write(json.dumps(reply).encode())
            await writer.drain()
        except Exception:
            log.exception("identity request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, sock: socket.socket) -> dict[str, object]:
        data = b""
        while chunk := await reader.read(65536):
            data += chunk
            if len(data) > MAX_REQUEST:
                return {"error": f"request exceeds {MAX_REQUEST} bytes"}
        try:
            request = json.loads(data)
            csr = request["csr"]
            ttl = int(request.get("ttlSeconds", 0))
            if not isinstance(csr, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"error": "request is not a JSON object with a 'csr' (PEM string)"}
        try:
            pod = await attest_pid(peer_pid(sock), self._attached)
        except NotAttested as error:
            return {"error": str(error)}
        try:
            issued = await self._ca.sign(pod, csr, ttl)
        except grpc.aio.AioRpcError as error:
            return {"error": f"tulle-control refused {pod}: {error.details()}"}
        log.info("issued %s to pod %s", issued.identity, pod)
        return {"identity": issued.identity, "certChain": list(issued.cert_chain), "trustBundle": issued.trust_bundle}
