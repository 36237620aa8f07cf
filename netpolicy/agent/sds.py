"""The node agent's SDS server: Envoy's SecretDiscoveryService for a pod's sidecar, as
istio-agent serves it.

Rules:
- One unix socket per attested pod (`<sds dir>/<namespace>/<pod>/socket`, owned by the
  sidecar's uid 1337, mode 0600), served by a server that knows which pod it is for: the
  socket decides the identity a sidecar gets, never the request. Since every sidecar on a
  node has uid 1337, the agent also checks that the caller runs in that pod's network
  namespace (`PodSdsServer` with `attest`) before a byte reaches the gRPC server.
- Secret `default` is the pod's `tls_certificate`: its private key is generated here, on
  the node (never sent anywhere; only the CSR goes to tulle-control), the chain comes
  from tulle-control's CA. Secret `ROOTCA` is the `validation_context` (trust bundle).
  Any other name is refused (PERMISSION_DENIED naming it): a sidecar cannot fetch
  another workload's or namespace's secrets through its socket.
- Rotation: a new key and certificate at half the certificate's remaining lifetime (retried with
  back-off on failure while the old one serves); each rotation is pushed to every open
  stream as a new version. Envoy applies new secrets to new handshakes only, so
  connections in flight are not dropped.
- State of the world: each response carries every subscribed secret; ACKs (a request
  echoing the last nonce) and NACKs (error_detail, logged) need no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from cni.capture import PROXY_UID
from netpolicy.agent.identity import CertificateAuthorityClient, NotAttested, PodRef, peer_pid
from proxy.tls.workload_identity import new_key_and_csr, renewal_time, retry_delay

log = logging.getLogger("tulle.agent.sds")

SECRET_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CERTIFICATE: Final = "default"
ROOT_CA: Final = "ROOTCA"
Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WorkloadSecrets:
    """One pod's key, certificate and trust bundle, renewed at half-life."""

    def __init__(self, pod: PodRef, ca: CertificateAuthorityClient, ttl_seconds: int = 0,
                 clock: Clock = _utc_now) -> None:
        self.pod = pod
        self.identity = ""
        self.version = 0
        self.not_after: dt.datetime | None = None
        self._ca = ca
        self._ttl = ttl_seconds
        self._clock = clock
        self._secrets: dict[str, secret_pb2.Secret] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Issues the first certificate (so the first SDS answer is never empty), then
        keeps renewing it in the background. Idempotent: the first SDS stream of a pod
        starts it, so pods without a sidecar never cost the CA anything."""
        async with self._starting:
            if self._task is None:
                renew_at = await self._rotate()
                self._task = asyncio.create_task(self._renew_forever(renew_at), name=f"sds-renew {self.pod}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def secret(self, name: str) -> secret_pb2.Secret:
        return self._secrets[name]

    async def wait_newer(self, version: int) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self.version > version)
            return self.version

    async def _rotate(self) -> dt.datetime:
        key = new_key_and_csr()
        issued = await self._ca.sign(self.pod, key.csr_pem.decode(), self._ttl)
        chain = "".join(issued.cert_chain).encode()
        self._secrets = {
            CERTIFICATE: secret_pb2.Secret(name=CERTIFICATE, tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=chain),
                private_key=base_pb2.DataSource(inline_bytes=key.key_pem))),
            ROOT_CA: secret_pb2.Secret(name=ROOT_CA, validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=issued.trust_bundle.encode()))),
        }
        self.identity = issued.identity
        async with self._changed:
            self.version += 1
            self._changed.notify_all()
        log.info("pod %s: certificate %d for %s", self.pod, self.version, issued.identity)
        self.not_after = x509.load_pem_x509_certificate(issued.cert_chain[0].encode()).not_valid_after_utc
        return renewal_time(chain, self._clock())

    async def _renew_forever(self, renew_at: dt.datetime) -> None:
        failures = 0
        while True:
            await asyncio.sleep(max((renew_at - self._clock()).total_seconds(), 0.0))
            try:
                renew_at = await self._rotate()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                renew_at = self._clock() + retry_delay(failures)
                log.warning("pod %s: renewal failed (%s); retrying at %s", self.pod, error, renew_at)


class SecretDiscovery(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, secrets: WorkloadSecrets) -> None:
        self._secrets = secrets

    async def StreamSecrets(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        try:
            await self._secrets.start()
        except Exception as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no certificate for pod {self._secrets.pod}: {error}")
        subscribed: set[str] = set()
        sent_version = 0
        requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            async for request in request_iterator:
                await requests.put(request)
            await requests.put(None)

        reader = asyncio.create_task(read())
        newer: asyncio.Future[Any] | None = None
        incoming: asyncio.Future[Any] | None = None
        try:
            while True:
                if newer is None:
                    newer = asyncio.ensure_future(self._secrets.wait_newer(sent_version))
                if incoming is None:
                    incoming = asyncio.ensure_future(requests.get())
                done, _ = await asyncio.wait({newer, incoming}, return_when=asyncio.FIRST_COMPLETED)
                push = False
                if incoming in done:
                    request = incoming.result()
                    incoming = None
                    if request is None:
                        return
                    if request.HasField("error_detail"):
                        log.warning("pod %s: SDS NACK: %s", self._secrets.pod, request.error_detail.message)
                    names = set(request.resource_names)
                    refused = sorted(names - {CERTIFICATE, ROOT_CA})
                    if refused:
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                            f"secret {refused[0]!r} is not served to pod {self._secrets.pod}: "
                                            f"only {CERTIFICATE!r} and {ROOT_CA!r}")
                    push = names != subscribed
                    subscribed = names
                if newer in done:
                    newer = None
                    push = True
                if push and subscribed:
                    sent_version = self._secrets.version
                    if newer is not None:
                        newer.cancel()
                        newer = None
                    yield self._response(subscribed, sent_version)
        finally:
            for task in (reader, newer, incoming):
                if task is not None:
                    task.cancel()

    def _response(self, names: set[str], version: int) -> discovery_pb2.DiscoveryResponse:
        response = discovery_pb2.DiscoveryResponse(
            version_info=str(version), type_url=SECRET_TYPE, nonce=f"{version}-{sorted(names)}")
        for name in sorted(names):
            response.resources.add().Pack(self._secrets.secret(name))
        return response


class PodSdsServer:
    """The SDS socket of one pod.

    With `attest` (the agent passes the identity socket's check, netns by SO_PEERCRED),
    the socket the sidecar reaches is a small front that lets a connection through to the
    gRPC server (on a root-only socket beside it) only if the caller runs in this pod's
    network namespace: on one host every sidecar has uid 1337 and can open any pod's
    socket file, so the file's mode alone does not say who calls. Without `attest`
    (tests), the gRPC server listens on the socket itself."""

    def __init__(self, path: Path, secrets: WorkloadSecrets,
                 attest: Callable[[int], Awaitable[PodRef]] | None = None) -> None:
        self.path = path
        self.secrets = secrets
        self._attest = attest
        self._server: grpc.aio.Server | None = None
        self._front: asyncio.AbstractServer | None = None
        self._grpc_path = path.with_name(path.name + ".grpc")

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (self.path, self._grpc_path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(SecretDiscovery(self.secrets), server)
        grpc_path = self._grpc_path if self._attest is not None else self.path
        server.add_insecure_port(f"unix:{grpc_path}")
        os.chmod(grpc_path, 0o600)
        await server.start()
        self._server = server
        if self._attest is not None:
            self._front = await asyncio.start_unix_server(self._on_connection, path=str(self.path))
        # Only root and the sidecar's uid may connect (grpc binds it with the umask's mode).
        os.chown(self.path, PROXY_UID, PROXY_UID)
        os.chmod(self.path, 0o600)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._attest is not None
        try:
            caller = await self._attest(peer_pid(writer.get_extra_info("socket")))
        except (NotAttested, OSError) as error:
            caller = None
            log.warning("SDS socket of %s: refused a caller: %s", self.secrets.pod, error)
        if caller != self.secrets.pod:
            if caller is not None:
                log.warning("SDS socket of %s: refused pod %s", self.secrets.pod, caller)
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(str(self._grpc_path))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))

    async def stop(self) -> None:
        if self._front is not None:
            self._front.close()
        if self._server is not None:
            await self._server.stop(grace=0.5)
        await self.secrets.stop()
        for path in (self.path, self._grpc_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def pod_socket(root: Path, pod: PodRef) -> Path:
    return root / pod.namespace / pod.name / "socket"
