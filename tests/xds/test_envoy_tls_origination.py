"""A real Envoy, configured by tulle-control, originates TLS to a server outside the
mesh as a DestinationRule's trafficPolicy.tls says (SIMPLE, MUTUAL)."""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from tests.answering_server import AnsweringServer
from tests.ports import free_port
from tests.xds.harness import ControlPlane, Envoy, endpoints, eventually, http_get, pod, service

NODE_ID = "sidecar~127.0.0.1~client-0.default~default.svc.cluster.local"
_loopback = (f"127.0.1.{i}" for i in itertools.count(2))


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]  # cert, key: DNS name api.example
    client: tuple[Path, Path]


def _write_pair(ca: CertificateAuthority, out: Path, name: str, identity: SpiffeId, dns: tuple[str, ...]) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue_for_key(key.public_key(), identity, dt.datetime.now(dt.UTC), dt.timedelta(hours=1), dns)
    (out / f"{name}.pem").write_bytes(issued.chain_pem())
    (out / f"{name}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return out / f"{name}.pem", out / f"{name}-key.pem"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "example.org", dt.datetime.now(dt.UTC))
    (tmp_path / "ca.pem").write_bytes(ca.trust_bundle_pem())
    return Pki(tmp_path / "ca.pem",
               _write_pair(ca, tmp_path, "server", SpiffeId("example.org", "ext", "api"), ("api.example",)),
               _write_pair(ca, tmp_path, "client", SpiffeId("example.org", "default", "client"), ()))


class TlsServer(AnsweringServer):
    """An HTTPS server outside the mesh; answers with the URI SAN of the client's
    certificate ("-" without one)."""

    def __init__(self, pki: Pki, require_client_certificate: bool) -> None:
        self.name = "api-0"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*pki.server)
        if require_client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(pki.ca)
        super().__init__(_peer_uri, next(_loopback), tls=context)


def _peer_uri(request: http.server.BaseHTTPRequestHandler) -> bytes:
    peer: Any = request.connection.getpeercert() if isinstance(request.connection, ssl.SSLSocket) else None
    uris = [str(v) for k, v in (peer or {}).get("subjectAltName", ()) if k == "URI"]
    return (uris[0] if uris else "-").encode()


def serve(control: ControlPlane, server: TlsServer, tls: dict[str, Any]) -> int:
    """The server as Service `api` behind a DestinationRule with `tls`; returns the
    service port the sidecar listens on."""
    port = free_port()
    control.apply(pod(server.name, server.host, {"app": "api"}), service("api", port),
                  endpoints("api", [(server.name, server)]),  # type: ignore[list-item]
                  {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "metadata": {"name": "api", "namespace": "default"},
                   "spec": {"host": "api", "trafficPolicy": {"tls": tls}}})
    return port


def through_sidecar(control: ControlPlane, port: int, status: int) -> str:
    envoy = Envoy(control.port, "GRPC", NODE_ID, {"INTERCEPTION_MODE": "NONE", "NAMESPACE": "default"})
    try:
        def answered() -> str | None:
            code, body = http_get(port, "/", host="api.default")
            return body or "-" if code == status else None
        return eventually(answered)
    finally:
        envoy.close()


def test_simple_tls_reaches_a_server_the_given_ca_vouches_for(control: ControlPlane, pki: Pki) -> None:
    server = TlsServer(pki, require_client_certificate=False)
    try:
        port = serve(control, server, {"mode": "SIMPLE", "caCertificates": str(pki.ca), "sni": "api.example",
                                       "subjectAltNames": ["api.example"]})
        assert through_sidecar(control, port, 200) == "-"
    finally:
        server.close()


def test_simple_tls_refuses_a_server_with_another_name(control: ControlPlane, pki: Pki) -> None:
    server = TlsServer(pki, require_client_certificate=False)
    try:
        port = serve(control, server, {"mode": "SIMPLE", "caCertificates": str(pki.ca),
                                       "subjectAltNames": ["payments.example"]})
        through_sidecar(control, port, 503)
    finally:
        server.close()


def test_mutual_tls_presents_the_client_certificate(control: ControlPlane, pki: Pki) -> None:
    server = TlsServer(pki, require_client_certificate=True)
    try:
        port = serve(control, server, {"mode": "MUTUAL", "caCertificates": str(pki.ca),
                                       "clientCertificate": str(pki.client[0]), "privateKey": str(pki.client[1])})
        assert through_sidecar(control, port, 200) == "spiffe://example.org/ns/default/sa/client"
    finally:
        server.close()
