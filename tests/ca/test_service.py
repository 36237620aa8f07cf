"""The certificate service over a real gRPC channel on a unix socket."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from control.ca.authority import CertificateAuthority
from control.ca.service import CertificateService, Refused, sign_agent
from control.ca.spiffe import agent_identity
from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc
from tests.ca.test_authority import NOW, csr_for

PODS = {
    ("shop", "web-1"): {"metadata": {"name": "web-1", "namespace": "shop"},
                        "spec": {"nodeName": "node-1", "serviceAccountName": "frontend"}},
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[ca_pb2_grpc.CertificateServiceStub]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)
    service = CertificateService(
        ca, lambda ns, name: PODS.get((ns, name)), max_ttl=dt.timedelta(hours=24), clock=lambda: NOW)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ca_pb2_grpc.add_CertificateServiceServicer_to_server(service, server)
    address = f"unix://{tmp_path}/ca.sock"
    server.add_insecure_port(address)
    server.start()
    with grpc.insecure_channel(address) as channel:
        yield ca_pb2_grpc.CertificateServiceStub(channel)
    server.stop(grace=None)


def request(**fields: object) -> ca_pb2.CertificateRequest:
    base: dict[str, object] = {"csr": csr_for().decode(), "node": "node-1", "pod_namespace": "shop", "pod_name": "web-1"}
    return ca_pb2.CertificateRequest(**{**base, **fields})  # type: ignore[arg-type]


def test_an_agent_gets_a_chain_for_its_pods_identity(client: ca_pb2_grpc.CertificateServiceStub) -> None:
    response = client.CreateCertificate(request(validity_duration=20))
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    assert response.identity == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert len(response.cert_chain) == 2
    assert leaf.not_valid_after_utc - NOW == dt.timedelta(seconds=20)
    assert "BEGIN CERTIFICATE" in response.trust_bundle


def test_an_agent_of_another_node_is_denied(client: ca_pb2_grpc.CertificateServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        client.CreateCertificate(request(node="node-2"))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_csr_for_another_namespaces_identity_is_refused(client: ca_pb2_grpc.CertificateServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        client.CreateCertificate(request(csr=csr_for("spiffe://cluster.local/ns/payments/sa/api").decode()))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "may only have spiffe://cluster.local/ns/shop/sa/frontend" in (error.value.details() or "")


def agent_request(node: str = "node-1", **fields: object) -> ca_pb2.CertificateRequest:
    return ca_pb2.CertificateRequest(csr=csr_for().decode(), node=node, node_agent=True, **fields)  # type: ignore[arg-type]


def agent_certificate(ca: CertificateAuthority, node: str, ttl: dt.timedelta) -> x509.Certificate:
    return ca.issue(csr_for(), agent_identity(ca.trust_domain, node), NOW, ttl).certificate


def test_an_agent_renews_its_own_certificate_for_the_lifetime_it_was_issued(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)
    later = NOW + dt.timedelta(minutes=5)
    response = sign_agent(ca, agent_request(), later, "node-1", agent_certificate(ca, "node-1", dt.timedelta(hours=2)))
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    assert response.identity == "spiffe://cluster.local/ns/tulle-system/sa/tulle-agent.node-1"
    assert leaf.not_valid_after_utc == later + dt.timedelta(hours=2)


@pytest.mark.parametrize("proven", [None, "", "node-2"])
def test_only_a_channel_proving_the_agent_of_that_node_renews_its_certificate(tmp_path: Path, proven: str | None) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)
    with pytest.raises(Refused) as refused:
        sign_agent(ca, agent_request(), NOW, proven, agent_certificate(ca, "node-1", dt.timedelta(hours=1)))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_an_agent_renewal_names_no_pod(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)
    with pytest.raises(Refused) as refused:
        sign_agent(ca, agent_request(pod_namespace="shop", pod_name="web-1"), NOW, "node-1",
                   agent_certificate(ca, "node-1", dt.timedelta(hours=1)))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
