"""tulle-proxy as a mesh sidecar next to real Envoy: mTLS in both directions with
certificates from tulle-control's CA delivered by the node agent's SDS code, each side
seeing the other's SPIFFE ID; tulle-proxy's STRICT inbound port probed with openssl."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from tests.mtls.harness import App, Mesh, Sidecar, eventually, free_port, loopback_ip
from tests.mtls.test_envoy_mtls import (
    CLIENT,
    FRONTEND_ID,
    SERVER,
    STRICT,
    Lab,
    issue,
    namespace,
    pod,
    policy,
    raw_request,
    s_client,
)
from tests.tls.tulle_sidecar import TulleSidecar

REVIEWS_ID = "spiffe://cluster.local/ns/shop/sa/reviews"


@contextlib.contextmanager
def mixed_lab(tmp_path: Path, client_kind: type, server_kind: type) -> Iterator[Lab]:
    """The lab of tests/mtls with the client and server sidecars of the given kinds."""
    mesh = Mesh(tmp_path / "control")
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
        server = server_kind(mesh, SERVER, server_ip, server_sds.path, intercept=True)
        closers.append(server)
        client = client_kind(mesh, CLIENT, client_ip, client_sds.path, intercept=False)
        closers.append(client)
        lab = Lab(mesh, app, client, server, server_ip, app_port, service_port, sds_root)
        try:
            eventually(lambda: server.listening("virtualInbound") and client.listening(f"127.0.0.1_{service_port}"))
        except AssertionError as error:
            raise AssertionError(f"{error}\nserver log:\n{server.log()}\nclient log:\n{client.log()}") from None
        yield lab
    finally:
        for closer in reversed(closers):
            closer.close()


def client_handshakes(lab: Lab) -> int:
    return sum(v for k, v in lab.client.stats("ssl.handshake").items() if "outbound|" in k)


def test_envoy_client_and_tulle_server_talk_mtls_and_see_each_others_identity(tmp_path: Path) -> None:
    with mixed_lab(tmp_path, Sidecar, TulleSidecar) as lab:
        body = lab.until("/hello", 200)
        assert body["path"] == "/hello"
        # tulle-proxy (server side) saw Envoy's client certificate, and says who it is
        assert f"URI={FRONTEND_ID}" in body["xfcc"] and f"By={REVIEWS_ID}" in body["xfcc"]
        # Envoy (client side) checked tulle-proxy's SPIFFE ID: match_typed_subject_alt_names
        assert client_handshakes(lab) > 0
        assert sum(lab.client.stats("ssl.fail_verify_san").values()) == 0


def test_tulle_client_and_envoy_server_talk_mtls_and_see_each_others_identity(tmp_path: Path) -> None:
    with mixed_lab(tmp_path, TulleSidecar, Sidecar) as lab:
        body = lab.until("/hello", 200)
        assert f"URI={FRONTEND_ID}" in body["xfcc"]     # Envoy saw tulle-proxy's certificate
        assert client_handshakes(lab) > 0                # tulle-proxy checked Envoy's SAN
        assert sum(lab.client.stats("ssl.fail_verify_san").values()) == 0


def test_two_tulle_sidecars_talk_mtls(tmp_path: Path) -> None:
    with mixed_lab(tmp_path, TulleSidecar, TulleSidecar) as lab:
        body = lab.until("/pair", 200)
        assert f"URI={FRONTEND_ID}" in body["xfcc"] and f"By={REVIEWS_ID}" in body["xfcc"]


@pytest.fixture
def strict_tulle(tmp_path: Path) -> Iterator[Lab]:
    with mixed_lab(tmp_path, Sidecar, TulleSidecar) as lab:
        assert raw_request(lab) is not None   # PERMISSIVE by default: plaintext is served
        lab.mesh.apply(STRICT)
        eventually(lambda: raw_request(lab) is None)
        yield lab


def test_tulle_strict_inbound_lets_no_plaintext_reach_the_app(strict_tulle: Lab) -> None:
    before = strict_tulle.app.hits
    assert [raw_request(strict_tulle) for _ in range(100)] == [None] * 100
    assert strict_tulle.app.hits == before
    assert f"URI={FRONTEND_ID}" in strict_tulle.until("/", 200)["xfcc"]   # mTLS still serves


def test_tulle_strict_inbound_serves_openssl_with_a_tulle_certificate(strict_tulle: Lab, tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(strict_tulle.mesh.state_dir / "ca", "cluster.local", dt.datetime.now(dt.UTC))
    cert, key = issue(ca, tmp_path, SpiffeId("cluster.local", "web", "curl"), dt.datetime.now(dt.UTC), dt.timedelta(hours=1))
    out = s_client(strict_tulle, cert, key)
    assert "200 OK" in out and "URI=spiffe://cluster.local/ns/web/sa/curl" in out, out


def test_tulle_strict_inbound_refuses_another_trust_domain(strict_tulle: Lab, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca", "evil.example", dt.datetime.now(dt.UTC))
    cert, key = issue(other, tmp_path, SpiffeId("evil.example", "web", "frontend"), dt.datetime.now(dt.UTC),
                      dt.timedelta(hours=1))
    before = strict_tulle.app.hits
    assert "200 OK" not in s_client(strict_tulle, cert, key)
    assert strict_tulle.app.hits == before


def test_tulle_strict_inbound_refuses_an_expired_certificate(strict_tulle: Lab, tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(strict_tulle.mesh.state_dir / "ca", "cluster.local", dt.datetime.now(dt.UTC))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    cert, key = issue(ca, tmp_path, SpiffeId("cluster.local", "web", "frontend"), long_ago, dt.timedelta(minutes=5))
    assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc < dt.datetime.now(dt.UTC)
    before = strict_tulle.app.hits
    assert "200 OK" not in s_client(strict_tulle, cert, key)
    assert strict_tulle.app.hits == before


def test_tulle_strict_inbound_refuses_a_client_without_certificate(strict_tulle: Lab) -> None:
    before = strict_tulle.app.hits
    assert "200 OK" not in s_client(strict_tulle, None, None)
    assert strict_tulle.app.hits == before


def test_tulle_enforces_authorization_policy_deny_over_allow(tmp_path: Path) -> None:
    with mixed_lab(tmp_path, Sidecar, TulleSidecar) as lab:
        lab.until("/admin", 200)
        allow = policy("AuthorizationPolicy", "frontend", "shop", {
            "selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/frontend"]}}]}]})
        deny = policy("AuthorizationPolicy", "no-admin", "shop", {
            "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})
        lab.mesh.apply(allow, deny)
        lab.until("/admin", 403)
        assert lab.get("/api")[0] == 200
        lab.mesh.apply(policy("AuthorizationPolicy", "frontend", "shop", {
            "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["ops"]}}]}]}))
        lab.until("/api", 403)
