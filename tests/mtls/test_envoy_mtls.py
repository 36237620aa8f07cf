"""Mutual TLS between two real Envoy sidecars with certificates from tulle-control's CA,
delivered by the node agent's SDS code; the STRICT inbound port probed with openssl.
The STRICT and AuthorizationPolicy tests run with tulle-proxy as the server sidecar too
(`[tulle-proxy]`): both must hold the same line."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from control.xds.proxy_commands import proxy_config
from netpolicy.agent.identity import PodRef
from tests.ca.test_authority import csr_for
from tests.mtls.harness import (
    NODE,
    App,
    Mesh,
    PodSidecar,
    Sidecar,
    eventually,
    free_port,
    loopback_ip,
)
from tests.tls.tulle_sidecar import TulleSidecar

SERVER = PodRef("shop", "reviews-v1")
CLIENT = PodRef("web", "frontend-1")
FRONTEND_ID = "spiffe://cluster.local/ns/web/sa/frontend"


def pod(ref: PodRef, ip: str, sa: str, labels: dict[str, str], port: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "app"}
    if port:
        container["ports"] = [{"containerPort": port}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": ref.name, "namespace": ref.namespace, "labels": labels,
                         "annotations": {"sidecar.tulle.io/inject": "true"}},
            "spec": {"nodeName": NODE, "serviceAccountName": sa, "containers": [container]},
            "status": {"podIP": ip}}


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def policy(kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


STRICT = policy("PeerAuthentication", "default", "istio-system", {"mtls": {"mode": "STRICT"}})


@dataclass
class Lab:
    mesh: Mesh
    app: App
    client: PodSidecar
    server: PodSidecar
    server_ip: str
    app_port: int
    service_port: int
    sds_root: Path

    def get(self, path: str = "/") -> tuple[int, dict[str, Any]]:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{self.service_port}{path}",
                                             headers={"Host": f"reviews.shop:{self.service_port}"})
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, {}
        except (urllib.error.URLError, ConnectionError):
            return 0, {}

    def until(self, path: str, status: int) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            code, body = self.get(path)
            return body or {"status": code} if code == status else None
        return eventually(check)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with make_lab(tmp_path) as lab:
        yield lab


SidecarKind = Callable[[Mesh, PodRef, str, Path, bool], PodSidecar]


@contextlib.contextmanager
def make_lab(tmp_path: Path, svid_ttl: dt.timedelta = dt.timedelta(hours=1),
             client_kind: SidecarKind = Sidecar, server_kind: SidecarKind = Sidecar) -> Iterator[Lab]:
    """The two-sidecar lab; each sidecar of the given kind (real Envoy unless told)."""
    mesh = Mesh(tmp_path / "control", svid_ttl)
    closers: list[Any] = [mesh]
    try:
        app_port, service_port = free_port(), free_port()
        server_ip, client_ip = loopback_ip(), loopback_ip()
        mesh.inbound_address[server_ip] = (server_ip, app_port)
        mesh.apply(namespace("shop"), namespace("web"), namespace("istio-system"),
                   pod(SERVER, server_ip, "reviews", {"app": "reviews"}, app_port),
                   pod(CLIENT, client_ip, "frontend", {"app": "frontend"}),
                   {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
                    "spec": {"selector": {"app": "reviews"},
                             "ports": [{"name": "http", "port": service_port, "targetPort": app_port}]}})
        sds_root = tmp_path / "sds"
        app = App(app_port)
        closers.append(app)
        server_sds = mesh.start_sds(SERVER, sds_root)
        client_sds = mesh.start_sds(CLIENT, sds_root)
        server = server_kind(mesh, SERVER, server_ip, server_sds.path, True)
        closers.append(server)
        client = client_kind(mesh, CLIENT, client_ip, client_sds.path, False)
        closers.append(client)
        lab = Lab(mesh, app, client, server, server_ip, app_port, service_port, sds_root)
        try:
            eventually(lambda: server.listening("virtualInbound") and client.listening(f"127.0.0.1_{service_port}"))
        except AssertionError as error:
            raise AssertionError(f"{error}\nserver log:\n{server.log()}\nclient log:\n{client.log()}") from None
        yield lab
    finally:
        for c in reversed(closers):
            c.close()


# -- sidecar to sidecar ------------------------------------------------------------------


def test_sidecars_talk_mtls_and_the_server_side_sees_the_clients_spiffe_id(lab: Lab) -> None:
    body = lab.until("/hello", 200)
    assert body["path"] == "/hello"
    assert f"URI={FRONTEND_ID}" in body["xfcc"]
    handshakes = lab.client.stats("ssl.handshake")
    assert any(v > 0 for k, v in handshakes.items() if "outbound|" in k), handshakes


def test_the_client_side_accepts_only_the_destinations_spiffe_id(lab: Lab) -> None:
    # Before any connection is pooled, the server sidecar is handed the certificate of
    # another service account (as if it were another workload answering on that address).
    updates = sum(lab.server.stats("ssl_context_update_by_sds").values())
    impostor = PodRef("shop", "impostor")
    lab.mesh.apply(pod(impostor, loopback_ip(), "payments", {"app": "payments"}))
    lab.mesh.sds[0].secrets.pod = impostor
    lab.mesh.run(lab.mesh.sds[0].secrets._rotate())
    eventually(lambda: sum(lab.server.stats("ssl_context_update_by_sds").values()) > updates)
    assert lab.get("/")[0] == 503
    assert sum(v for k, v in lab.client.stats("ssl.fail_verify_san").items()) > 0


# -- the STRICT inbound port (Envoy's and tulle-proxy's), probed directly ---------------


def raw_request(lab: Lab) -> bytes | None:
    """A plaintext HTTP request to the server sidecar's inbound port: the answer, or None
    when the connection was closed without one."""
    try:
        with socket.create_connection((lab.server_ip, lab.app_port), timeout=3) as s:
            s.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(4096)
            return data or None
    except OSError:
        return None


def issue(ca: CertificateAuthority, tmp: Path, identity: SpiffeId, now: dt.datetime, ttl: dt.timedelta) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue(csr_for(key=key), identity, now, ttl)
    cert, key_path = tmp / f"{identity.service_account}-{ca.trust_domain}.pem", tmp / f"{identity.service_account}-{ca.trust_domain}.key"
    cert.write_bytes(issued.chain_pem())
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_path


def s_client(lab: Lab, cert: Path | None, key: Path | None) -> str:
    """An HTTP request through `openssl s_client` with the given client certificate;
    its output (the app's answer when the handshake and request succeed)."""
    args = ["openssl", "s_client", "-connect", f"{lab.server_ip}:{lab.app_port}", "-quiet", "-verify_quiet",
            "-CAfile", str(lab.mesh.state_dir / "ca" / "ca-cert.pem")]
    if cert and key:
        args += ["-cert", str(cert), "-key", str(key)]
    done = subprocess.run(args, input=b"GET /tls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                          capture_output=True, timeout=15)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


@pytest.fixture(params=[Sidecar, TulleSidecar], ids=["envoy", "tulle-proxy"])
def strict_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """The lab under STRICT mTLS; its server sidecar a real Envoy or tulle-proxy."""
    with make_lab(tmp_path, server_kind=request.param) as lab:
        assert raw_request(lab) is not None  # PERMISSIVE by default: plaintext is served
        lab.mesh.apply(STRICT)
        eventually(lambda: raw_request(lab) is None)
        yield lab


def test_under_strict_plaintext_never_reaches_the_app_and_mtls_still_does(strict_lab: Lab) -> None:
    before = strict_lab.app.hits
    assert [raw_request(strict_lab) for _ in range(100)] == [None] * 100
    assert strict_lab.app.hits == before
    assert "URI=" + FRONTEND_ID in strict_lab.until("/", 200)["xfcc"]


def test_openssl_with_a_certificate_from_tulle_reaches_the_app(strict_lab: Lab, tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(strict_lab.mesh.state_dir / "ca", "cluster.local", dt.datetime.now(dt.UTC))
    cert, key = issue(ca, tmp_path, SpiffeId("cluster.local", "web", "curl"), dt.datetime.now(dt.UTC), dt.timedelta(hours=1))
    out = s_client(strict_lab, cert, key)
    assert "200 OK" in out and "URI=spiffe://cluster.local/ns/web/sa/curl" in out, out


def test_openssl_without_a_client_certificate_is_refused(strict_lab: Lab) -> None:
    before = strict_lab.app.hits
    assert "200 OK" not in s_client(strict_lab, None, None)
    assert strict_lab.app.hits == before


def test_a_client_certificate_from_another_trust_domain_is_refused(strict_lab: Lab, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca", "evil.example", dt.datetime.now(dt.UTC))
    cert, key = issue(other, tmp_path, SpiffeId("evil.example", "web", "frontend"), dt.datetime.now(dt.UTC),
                      dt.timedelta(hours=1))
    before = strict_lab.app.hits
    out = s_client(strict_lab, cert, key)
    assert "200 OK" not in out, out
    assert strict_lab.app.hits == before


def test_an_expired_client_certificate_is_refused(strict_lab: Lab, tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(strict_lab.mesh.state_dir / "ca", "cluster.local", dt.datetime.now(dt.UTC))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    cert, key = issue(ca, tmp_path, SpiffeId("cluster.local", "web", "frontend"), long_ago, dt.timedelta(minutes=5))
    assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc < dt.datetime.now(dt.UTC)
    before = strict_lab.app.hits
    out = s_client(strict_lab, cert, key)
    assert "200 OK" not in out, out
    assert strict_lab.app.hits == before


# -- AuthorizationPolicy -----------------------------------------------------------------


@pytest.fixture(params=[Sidecar, TulleSidecar], ids=["envoy", "tulle-proxy"])
def any_server_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """The lab with its server sidecar a real Envoy or tulle-proxy."""
    with make_lab(tmp_path, server_kind=request.param) as lab:
        yield lab


def test_authorization_policy_deny_wins_over_allow(any_server_lab: Lab) -> None:
    lab = any_server_lab
    lab.until("/admin", 200)
    allow = policy("AuthorizationPolicy", "frontend", "shop", {
        "selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/frontend"]}}]}]})
    deny = policy("AuthorizationPolicy", "no-admin", "shop", {
        "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})
    lab.mesh.apply(allow, deny)
    lab.until("/admin", 403)
    assert lab.get("/api")[0] == 200


def test_an_allow_policy_for_another_principal_denies_the_client(any_server_lab: Lab) -> None:
    lab = any_server_lab
    lab.until("/", 200)
    lab.mesh.apply(policy("AuthorizationPolicy", "only-ops", "shop", {
        "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["ops"]}}]}]}))
    lab.until("/", 403)


# -- rotation ----------------------------------------------------------------------------


ROTATION_LOAD = 60.0  # seconds of load: the issue's figures (the only long test)
ROTATION_TTL = dt.timedelta(seconds=20)  # certificate lifetime; rotated at half-life


def test_rotation_under_load_fails_no_request(tmp_path: Path) -> None:
    """60 s of requests, on mTLS connections between the sidecars that last one request
    each, while both sides' 20 s certificates rotate every 10 s: every request succeeds."""
    with make_lab(tmp_path, svid_ttl=ROTATION_TTL) as lab:
        lab.mesh.apply({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": {"name": "reviews", "namespace": "shop"},
                        "spec": {"host": "reviews", "trafficPolicy": {"connectionPool": {"http": {
                            "maxRequestsPerConnection": 1}}}}})
        lab.until("/", 200)
        first = [s.secrets.version for s in lab.mesh.sds]
        deadline = time.monotonic() + ROTATION_LOAD
        codes: dict[int, int] = {}
        while time.monotonic() < deadline:  # bounded in time; one request at a time
            code = lab.get("/load")[0]
            codes[code] = codes.get(code, 0) + 1
        assert set(codes) == {200}, codes
        assert codes[200] > 300
        rotations = ROTATION_LOAD / (ROTATION_TTL.total_seconds() / 2)
        assert all(s.secrets.version >= v + rotations - 1 for s, v in zip(lab.mesh.sds, first, strict=True))
        handshakes = sum(v for k, v in lab.client.stats("ssl.handshake").items() if "outbound|" in k)
        assert handshakes > 300  # new connections, hence new handshakes, all along


# -- meshctl -----------------------------------------------------------------------------


def test_meshctl_proxy_config_secrets_shows_the_sidecars_certificates(lab: Lab) -> None:
    lab.until("/", 200)
    result = CliRunner().invoke(proxy_config, ["reviews-v1.shop", "secrets", "--admin", lab.server.admin])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert rows[0][:4] == ["NAME", "TYPE", "IDENTITY", "SERIAL"]
    default = next(r for r in rows if r[0] == "default")
    assert default[1:4] == ["Cert", "Chain", "spiffe://cluster.local/ns/shop/sa/reviews"]
    not_before, not_after = (dt.datetime.fromisoformat(v) for v in default[5:7])
    assert not_after - not_before == dt.timedelta(hours=1, minutes=1)
    root = next(r for r in rows if r[0] == "ROOTCA")
    assert root[1:3] == ["Trust", "Bundle"] and "Tulle root CA" in " ".join(root)


def test_meshctl_proxy_config_secrets_names_the_proxy_it_reached(lab: Lab) -> None:
    result = CliRunner().invoke(proxy_config, ["frontend-1.web", "secrets", "--admin", lab.server.admin])
    assert result.exit_code != 0 and "not 'frontend-1.web'" in result.output
