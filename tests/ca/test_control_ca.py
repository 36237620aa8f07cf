"""tulle-control's CA: created under the state dir on first start (key 0600), reused on
the next, serving CertificateService on the control plane's root-only unix socket with
pods read from the registry; an operator-supplied CA replaces the generated one."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from control.ca.authority import CertificateAuthority
from control.ca.component import CaConfig, CaService
from control.plane import ControlPlane, ControlPlaneConfig
from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc
from tests.ca.test_authority import NOW, csr_for

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "default"},
       "spec": {"nodeName": "node-1", "serviceAccountName": "frontend",
                "containers": [{"name": "app", "image": "nginx"}]}}


def run(tmp_path: Path, scenario: Callable[[Any, ControlPlane, CaService], Awaitable[None]],
        config: CaConfig | None = None) -> None:
    async def main() -> None:
        ca = CaService(config)
        plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "run" / "control.sock",
                                                listen=()), [ca])
        await plane.start()
        try:
            await plane.registry.apply([POD])
            async with grpc.aio.insecure_channel(f"unix:{tmp_path}/run/control.sock") as channel:
                await asyncio.wait_for(scenario(ca_pb2_grpc.CertificateServiceStub(channel), plane, ca), 30)
        finally:
            await plane.stop()

    asyncio.run(main())


def request(**fields: object) -> ca_pb2.CertificateRequest:
    base: dict[str, object] = {"csr": csr_for().decode(), "node": "node-1", "pod_namespace": "default",
                               "pod_name": "web-1"}
    return ca_pb2.CertificateRequest(**{**base, **fields})  # type: ignore[arg-type]


def test_the_control_plane_signs_a_csr_for_a_pod_in_its_registry(tmp_path: Path) -> None:
    async def scenario(stub: Any, plane: ControlPlane, ca: CaService) -> None:
        response = await stub.CreateCertificate(request())
        assert response.identity == "spiffe://cluster.local/ns/default/sa/frontend"
        leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=24, minutes=1)
        assert response.trust_bundle == (tmp_path / "ca" / "ca-cert.pem").read_text()

    run(tmp_path, scenario)
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_the_ca_is_reused_across_restarts(tmp_path: Path) -> None:
    bundles: list[str] = []

    async def scenario(stub: Any, plane: ControlPlane, ca: CaService) -> None:
        bundles.append((await stub.CreateCertificate(request())).trust_bundle)

    run(tmp_path, scenario)
    run(tmp_path, scenario)
    assert bundles[0] == bundles[1]


def test_a_pod_unknown_to_the_registry_gets_nothing(tmp_path: Path) -> None:
    async def scenario(stub: Any, plane: ControlPlane, ca: CaService) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.CreateCertificate(request(pod_name="ghost"))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "default/ghost does not exist" in str(error.value.details())

    run(tmp_path, scenario)


def test_an_agent_may_not_act_for_a_pod_of_another_node(tmp_path: Path) -> None:
    async def scenario(stub: Any, plane: ControlPlane, ca: CaService) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.CreateCertificate(request(node="node-2"))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED

    run(tmp_path, scenario)


def test_trust_domain_and_svid_ttl_are_configurable(tmp_path: Path) -> None:
    async def scenario(stub: Any, plane: ControlPlane, ca: CaService) -> None:
        response = await stub.CreateCertificate(request())
        assert response.identity == "spiffe://prod.example/ns/default/sa/frontend"
        leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(minutes=21)

    run(tmp_path, scenario, CaConfig(trust_domain="prod.example", svid_ttl=dt.timedelta(minutes=20)))


def test_an_operator_supplied_ca_signs_instead_of_a_generated_one(tmp_path: Path) -> None:
    operator = CertificateAuthority.load_or_create(tmp_path / "operator", "cluster.local", NOW)
    config = CaConfig(cert=tmp_path / "operator" / "ca-cert.pem", key=tmp_path / "operator" / "ca-key.pem")

    async def scenario(stub: Any, plane: ControlPlane, ca: CaService) -> None:
        response = await stub.CreateCertificate(request())
        leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
        assert leaf.issuer == operator.signer.subject
        assert response.trust_bundle.encode() == operator.trust_bundle_pem()

    run(tmp_path / "state", scenario, config)
    assert not (tmp_path / "state" / "ca").exists()


def test_a_ca_key_and_certificate_come_together() -> None:
    with pytest.raises(ValueError, match="--ca-cert and --ca-key go together"):
        CaConfig(cert=Path("/x.pem"))


def test_over_the_plaintext_tcp_listener_nobody_may_claim_a_node(tmp_path: Path) -> None:
    async def main() -> None:
        plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "run" / "control.sock",
                                                listen=["127.0.0.1:0"]), [CaService()])
        await plane.start()
        try:
            await plane.registry.apply([POD])
            async with grpc.aio.insecure_channel(plane.addresses[0]) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await ca_pb2_grpc.CertificateServiceStub(channel).CreateCertificate(request())
                assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await plane.stop()

    asyncio.run(main())
