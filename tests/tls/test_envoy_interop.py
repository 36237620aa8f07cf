"""tulle-proxy as a mesh sidecar next to real Envoy: mTLS in both directions with
certificates from tulle-control's CA delivered by the node agent's SDS code, each side
seeing the other's SPIFFE ID; tulle-proxy's STRICT inbound port probed with openssl."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from tests.mtls.harness import Sidecar, eventually
from tests.mtls.test_envoy_mtls import (
    FRONTEND_ID,
    STRICT,
    Lab,
    issue,
    make_lab,
    policy,
    raw_request,
    s_client,
)
from tests.tls.tulle_sidecar import TulleSidecar

REVIEWS_ID = "spiffe://cluster.local/ns/shop/sa/reviews"


def client_handshakes(lab: Lab) -> int:
    return sum(v for k, v in lab.client.stats("ssl.handshake").items() if "outbound|" in k)


def test_envoy_client_and_tulle_server_talk_mtls_and_see_each_others_identity(tmp_path: Path) -> None:
    with make_lab(tmp_path, client_kind=Sidecar, server_kind=TulleSidecar) as lab:
        body = lab.until("/hello", 200)
        assert body["path"] == "/hello"
        # tulle-proxy (server side) saw Envoy's client certificate, and says who it is
        assert f"URI={FRONTEND_ID}" in body["xfcc"] and f"By={REVIEWS_ID}" in body["xfcc"]
        # Envoy (client side) checked tulle-proxy's SPIFFE ID: match_typed_subject_alt_names
        assert client_handshakes(lab) > 0
        assert sum(lab.client.stats("ssl.fail_verify_san").values()) == 0


def test_tulle_client_and_envoy_server_talk_mtls_and_see_each_others_identity(tmp_path: Path) -> None:
    with make_lab(tmp_path, client_kind=TulleSidecar, server_kind=Sidecar) as lab:
        body = lab.until("/hello", 200)
        assert f"URI={FRONTEND_ID}" in body["xfcc"]     # Envoy saw tulle-proxy's certificate
        assert client_handshakes(lab) > 0                # tulle-proxy checked Envoy's SAN
        assert sum(lab.client.stats("ssl.fail_verify_san").values()) == 0


def test_two_tulle_sidecars_talk_mtls(tmp_path: Path) -> None:
    with make_lab(tmp_path, client_kind=TulleSidecar, server_kind=TulleSidecar) as lab:
        body = lab.until("/pair", 200)
        assert f"URI={FRONTEND_ID}" in body["xfcc"] and f"By={REVIEWS_ID}" in body["xfcc"]


@pytest.fixture
def strict_tulle(tmp_path: Path) -> Iterator[Lab]:
    with make_lab(tmp_path, client_kind=Sidecar, server_kind=TulleSidecar) as lab:
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
    with make_lab(tmp_path, client_kind=Sidecar, server_kind=TulleSidecar) as lab:
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
