"""tulle-control's mTLS xDS port lets no one in who does not belong: no certificate or
one from another CA gets nothing, a sidecar's certificate reads only its own pod's
config, an agent's only its own node's."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2

from control.ca.authority import CertificateAuthority
from control.ca.component import CaService
from control.ca.serving import ServingIdentity
from control.ca.spiffe import SpiffeId, agent_identity
from control.plane import ControlPlane, ControlPlaneConfig
from control.xds.resources import CLUSTER
from control.xds.service import XdsService
from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc
from tests.ca.test_authority import csr_for

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CSDS = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"
Credentials = tuple[bytes, bytes] | None  # (key PEM, chain PEM) of the client, None: no certificate


def pod(ns: str, name: str, sa: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": "node-1", "serviceAccountName": sa, "containers": [{"name": "a", "image": "a"}]},
            "status": {"podIP": "10.244.1.4" if ns == "shop" else "10.244.1.5"}}


def run(tmp_path: Path, scenario: Callable[[str, CertificateAuthority, bytes], Awaitable[None]]) -> None:
    async def main() -> None:
        authority = CaService()
        xds = XdsService("", tls_listen="127.0.0.1:0",
                         credentials=lambda: ServingIdentity(authority.ca).server_credentials())  # type: ignore[arg-type]
        plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "run" / "control.sock", listen=()),
                             [authority, xds])
        xds.ads.services.append(lambda server: authority.serve_for_remote_agents(server, plane))
        await plane.start()
        try:
            await plane.registry.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                                        for n in ("shop", "data")])
            await plane.registry.apply([pod("shop", "web-1", "frontend"), pod("data", "db-1", "postgres")])
            await asyncio.sleep(0.3)  # the xDS debouncer
            assert authority.ca is not None
            await asyncio.wait_for(scenario(xds.tls_address, authority.ca, authority.ca.trust_bundle_pem()), 30)
        finally:
            await plane.stop()

    asyncio.run(main())


def certificate(ca: CertificateAuthority, identity: SpiffeId) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue(csr_for(key=key), identity, dt.datetime.now(dt.UTC), dt.timedelta(hours=1))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()), issued.chain_pem()


async def ads(address: str, roots: bytes, client: Credentials, node_id: str) -> discovery_pb2.DiscoveryResponse:
    """The first response of an ADS stream asking for clusters as `node_id`."""
    creds = grpc.ssl_channel_credentials(roots, *(client or (None, None)))
    async with grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "tulle-control")]) as ch:
        call = ch.stream_stream(ADS, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                response_deserializer=discovery_pb2.DiscoveryResponse.FromString)

        async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            yield discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER)
            await asyncio.sleep(30)

        stream = call(requests(), timeout=5)
        response: discovery_pb2.DiscoveryResponse = await stream.read()
        stream.cancel()
        return response


async def refused(work: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await work
    code: grpc.StatusCode = error.value.code()
    return code


SIDECAR_WEB = "sidecar~10.244.1.4~web-1.shop~shop.svc.cluster.local"
SIDECAR_DB = "sidecar~10.244.1.5~db-1.data~data.svc.cluster.local"


def test_a_sidecar_with_its_own_workload_certificate_reads_its_config(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        web = certificate(ca, SpiffeId("cluster.local", "shop", "frontend"))
        assert (await ads(address, roots, web, SIDECAR_WEB)).type_url == CLUSTER

    run(tmp_path, scenario)


def test_a_client_without_a_certificate_gets_nothing(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        assert await refused(ads(address, roots, None, SIDECAR_WEB)) == grpc.StatusCode.UNAVAILABLE

    run(tmp_path, scenario)


def test_a_certificate_from_another_ca_gets_nothing(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        other = CertificateAuthority.load_or_create(tmp_path / "other", "cluster.local", dt.datetime.now(dt.UTC))
        forged = certificate(other, SpiffeId("cluster.local", "shop", "frontend"))
        assert await refused(ads(address, roots, forged, SIDECAR_WEB)) == grpc.StatusCode.UNAVAILABLE

    run(tmp_path, scenario)


def test_a_sidecar_cannot_read_another_namespaces_pod_config(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        web = certificate(ca, SpiffeId("cluster.local", "shop", "frontend"))
        assert await refused(ads(address, roots, web, SIDECAR_DB)) == grpc.StatusCode.PERMISSION_DENIED

    run(tmp_path, scenario)


def test_an_agent_certificate_acts_for_its_own_node_only(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        agent = certificate(ca, agent_identity("cluster.local", "node-1"))
        assert (await ads(address, roots, agent, "agent~192.168.0.1~node-1~cluster.local")).type_url == CLUSTER
        code = await refused(ads(address, roots, agent, "agent~192.168.0.2~node-2~cluster.local"))
        assert code == grpc.StatusCode.PERMISSION_DENIED

    run(tmp_path, scenario)


def test_only_system_identities_read_every_proxys_status(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        async def csds(client: tuple[bytes, bytes]) -> Any:
            creds = grpc.ssl_channel_credentials(roots, *client)
            async with grpc.aio.secure_channel(address, creds,
                                               options=[("grpc.ssl_target_name_override", "tulle-control")]) as ch:
                call = ch.unary_unary(CSDS, request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                                      response_deserializer=csds_pb2.ClientStatusResponse.FromString)
                return await call(csds_pb2.ClientStatusRequest(), timeout=5)

        web = certificate(ca, SpiffeId("cluster.local", "shop", "frontend"))
        assert await refused(csds(web)) == grpc.StatusCode.PERMISSION_DENIED
        await csds(certificate(ca, SpiffeId("cluster.local", "tulle-system", "meshctl")))

    run(tmp_path, scenario)


async def sign(address: str, roots: bytes, client: Credentials, node: str) -> ca_pb2.CertificateResponse:
    creds = grpc.ssl_channel_credentials(roots, *(client or (None, None)))
    async with grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "tulle-control")]) as ch:
        stub = ca_pb2_grpc.CertificateServiceStub(ch)
        response: ca_pb2.CertificateResponse = await stub.CreateCertificate(ca_pb2.CertificateRequest(
            csr=csr_for().decode(), node=node, pod_namespace="shop", pod_name="web-1"), timeout=5)
        return response


def test_a_remote_agent_gets_certificates_for_its_nodes_pods_over_mtls(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        agent = certificate(ca, agent_identity("cluster.local", "node-1"))
        assert (await sign(address, roots, agent, "node-1")).identity == "spiffe://cluster.local/ns/shop/sa/frontend"
        other_node = certificate(ca, agent_identity("cluster.local", "node-2"))
        assert await refused(sign(address, roots, other_node, "node-1")) == grpc.StatusCode.PERMISSION_DENIED

    run(tmp_path, scenario)


def test_a_workload_certificate_cannot_obtain_certificates(tmp_path: Path) -> None:
    async def scenario(address: str, ca: CertificateAuthority, roots: bytes) -> None:
        web = certificate(ca, SpiffeId("cluster.local", "shop", "frontend"))
        assert await refused(sign(address, roots, web, "node-1")) == grpc.StatusCode.PERMISSION_DENIED

    run(tmp_path, scenario)
