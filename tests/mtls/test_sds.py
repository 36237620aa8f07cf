"""The node agent's SDS server over a real gRPC unix socket: a pod's sidecar gets its
own key and certificate (`default`) and the trust bundle (`ROOTCA`), new versions on
rotation, and nothing else."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from control.ca.component import CaConfig, CaService
from control.plane import ControlPlane, ControlPlaneConfig
from netpolicy.agent.identity import CertificateAuthorityClient, PodRef
from netpolicy.agent.sds import SECRET_TYPE, PodSdsServer, WorkloadSecrets, pod_socket

POD = PodRef("shop", "web-1")


def run(tmp_path: Path, scenario: Callable[[Any, PodSdsServer], Awaitable[None]], ttl: int = 0) -> None:
    async def main() -> None:
        plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "run" / "control.sock", listen=()),
                             [CaService(CaConfig(svid_ttl=dt.timedelta(hours=1)))])
        await plane.start()
        ca = CertificateAuthorityClient("node-1", f"unix:{tmp_path}/run/control.sock")
        server = PodSdsServer(pod_socket(tmp_path / "sds", POD), WorkloadSecrets(POD, ca, ttl))
        try:
            await plane.registry.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])
            await plane.registry.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop"},
                                         "spec": {"nodeName": "node-1", "serviceAccountName": "frontend",
                                                  "containers": [{"name": "app", "image": "app"}]}}])
            await server.start()
            async with grpc.aio.insecure_channel(f"unix:{server.path}") as channel:
                await asyncio.wait_for(scenario(sds_pb2_grpc.SecretDiscoveryServiceStub(channel), server), 30)
        finally:
            await server.stop()
            await ca.close()
            await plane.stop()

    asyncio.run(main())


async def requests(*names: list[str]) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
    for n in names:
        yield discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=n)
    await asyncio.sleep(3600)  # keep the stream open, as Envoy does


def unpack(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for resource in response.resources:
        secret = secret_pb2.Secret()
        resource.Unpack(secret)
        out[secret.name] = secret
    return out


def test_a_sidecar_gets_its_own_key_and_certificate_and_the_trust_bundle(tmp_path: Path) -> None:
    async def scenario(stub: Any, server: PodSdsServer) -> None:
        stream = stub.StreamSecrets(requests(["default", "ROOTCA"]))
        secrets = unpack(await stream.read())
        stream.cancel()
        tls = secrets["default"].tls_certificate
        leaf = x509.load_pem_x509_certificate(tls.certificate_chain.inline_bytes)
        key = serialization.load_pem_private_key(tls.private_key.inline_bytes, None)
        assert leaf.public_key() == key.public_key()
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/frontend"]
        assert secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes == (tmp_path / "ca" / "ca-cert.pem").read_bytes()

    run(tmp_path, scenario)


def test_another_namespaces_secret_is_refused(tmp_path: Path) -> None:
    async def scenario(stub: Any, server: PodSdsServer) -> None:
        stream = stub.StreamSecrets(requests(["spiffe://cluster.local/ns/data/sa/postgres"]))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stream.read()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not served to pod shop/web-1" in str(error.value.details())

    run(tmp_path, scenario)


def test_rotation_pushes_a_new_certificate_at_half_life(tmp_path: Path) -> None:
    async def scenario(stub: Any, server: PodSdsServer) -> None:
        stream = stub.StreamSecrets(requests(["default"]))
        first = await stream.read()
        second = await stream.read()  # 4 s certificates: renewed 2 s after issue
        stream.cancel()
        assert int(second.version_info) == int(first.version_info) + 1
        old, new = (x509.load_pem_x509_certificate(unpack(r)["default"].tls_certificate.certificate_chain.inline_bytes)
                    for r in (first, second))
        assert new.serial_number != old.serial_number
        assert new.public_key() != old.public_key()  # a new key, too

    run(tmp_path, scenario, ttl=4)
