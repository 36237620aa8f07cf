"""A DestinationRule's trafficPolicy.tls (Istio's ClientTLSSettings) on the outbound
clusters: DISABLE, ISTIO_MUTUAL, SIMPLE and MUTUAL, per port and per subset."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from control.validation import InvalidObjectError, validate
from control.xds.resources import CLUSTER
from control.xds.tls import SYSTEM_CA_BUNDLE
from tests.proxy_process import TULLE
from tests.xds.harness import ENVOY
from tests.xds.test_security_translation import sidecar_config, validate_with_envoy

WEB = "outbound|9080||reviews.shop.svc.cluster.local"
DB = "outbound|5432||reviews.shop.svc.cluster.local"


def rule(tls: dict[str, Any] | None = None, port_tls: dict[str, Any] | None = None,
         subset_tls: dict[str, Any] | None = None) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if tls:
        policy["tls"] = tls
    if port_tls:
        policy["portLevelSettings"] = [{"port": {"number": 5432}, "tls": port_tls}]
    spec: dict[str, Any] = {"host": "reviews", "trafficPolicy": policy}
    if subset_tls:
        spec["subsets"] = [{"name": "v1", "labels": {"app": "reviews"}, "trafficPolicy": {"tls": subset_tls}}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "shop"}, "spec": spec}


def clusters(*docs: dict[str, Any]) -> dict[str, cluster_pb2.Cluster]:
    return {name: r.message for (t, name), r in sidecar_config(*docs).items()
            if t == CLUSTER and isinstance(r.message, cluster_pb2.Cluster)}


def context(cluster: cluster_pb2.Cluster) -> tls_pb2.UpstreamTlsContext:
    out = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(out)
    return out


def test_disable_reaches_every_endpoint_in_plaintext_even_meshed_ones() -> None:
    web = clusters(rule({"mode": "DISABLE"}))[WEB]
    assert not web.HasField("transport_socket") and not web.transport_socket_matches


def test_istio_mutual_uses_the_mesh_certificates_for_every_endpoint() -> None:
    web = clusters(rule({"mode": "ISTIO_MUTUAL"}))[WEB]
    assert not web.transport_socket_matches
    common = context(web).common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    sans = common.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert [s.matcher.exact for s in sans] == ["spiffe://cluster.local/ns/shop/sa/reviews"]
    assert context(web).sni == "outbound_.9080_._.reviews.shop.svc.cluster.local"


def test_istio_mutual_checks_the_subject_alt_names_and_sni_given() -> None:
    web = clusters(rule({"mode": "ISTIO_MUTUAL", "sni": "reviews.example", "subjectAltNames": [
        "spiffe://cluster.local/ns/shop/sa/reviews-v2"]}))[WEB]
    sans = context(web).common_tls_context.combined_validation_context.default_validation_context
    assert [s.matcher.exact for s in sans.match_typed_subject_alt_names] == ["spiffe://cluster.local/ns/shop/sa/reviews-v2"]
    assert context(web).sni == "reviews.example"


def test_simple_originates_tls_verified_by_the_given_ca_and_names() -> None:
    web = clusters(rule({"mode": "SIMPLE", "caCertificates": "/etc/tulle/ca.pem", "sni": "api.example.com",
                         "subjectAltNames": ["api.example.com", "spiffe://other.td/ns/a/sa/b"]}))[WEB]
    ctx = context(web)
    validation = ctx.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/tulle/ca.pem"
    assert [(s.san_type, s.matcher.exact) for s in validation.match_typed_subject_alt_names] == [
        (2, "api.example.com"), (3, "spiffe://other.td/ns/a/sa/b")]  # DNS, URI
    assert ctx.sni == "api.example.com"
    assert not ctx.common_tls_context.tls_certificates and not ctx.common_tls_context.tls_certificate_sds_secret_configs


def test_simple_without_a_ca_trusts_the_system_bundle_and_names_the_host() -> None:
    ctx = context(clusters(rule({"mode": "SIMPLE"}))[WEB])
    assert ctx.common_tls_context.validation_context.trusted_ca.filename == SYSTEM_CA_BUNDLE
    assert ctx.sni == "reviews.shop.svc.cluster.local"


def test_insecure_skip_verify_verifies_nothing() -> None:
    ctx = context(clusters(rule({"mode": "SIMPLE", "insecureSkipVerify": True}))[WEB])
    assert not ctx.common_tls_context.validation_context.HasField("trusted_ca")


def test_mutual_presents_the_client_certificate_files() -> None:
    ctx = context(clusters(rule({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem",
                                 "caCertificates": "/ca.pem"}))[WEB])
    [certificate] = ctx.common_tls_context.tls_certificates
    assert (certificate.certificate_chain.filename, certificate.private_key.filename) == ("/c.pem", "/k.pem")


def test_port_level_tls_applies_to_that_port_only() -> None:
    out = clusters(rule(port_tls={"mode": "DISABLE"}))
    assert not out[DB].transport_socket_matches and not out[DB].HasField("transport_socket")
    assert out[WEB].transport_socket_matches  # auto mTLS as before


def test_a_subsets_tls_overrides_the_services() -> None:
    out = clusters(rule({"mode": "DISABLE"}, subset_tls={"mode": "ISTIO_MUTUAL"}))
    assert not out[WEB].HasField("transport_socket")
    assert out["outbound|9080|v1|reviews.shop.svc.cluster.local"].HasField("transport_socket")


@pytest.mark.parametrize(("tls", "field"), [
    ({"mode": "SIMPLE", "credentialName": "reviews-cert"}, "spec.trafficPolicy.tls.credentialName"),
    ({"mode": "MUTUAL", "clientCertificate": "/c.pem"}, "spec.trafficPolicy.tls.privateKey"),
])
def test_tls_settings_tulle_cannot_honour_are_refused_naming_the_field(tls: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidObjectError, match=field.replace(".", r"\.")):
        validate(rule(tls))


@pytest.mark.parametrize("proxy", [ENVOY, TULLE], ids=["envoy", "tulle-proxy"])
def test_both_proxies_accept_tls_origination_clusters(proxy: Path, tmp_path: Path) -> None:
    """(SPIFFE SANs: tulle-proxy checks URI SANs only, and NACKs DNS ones.)"""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "example.org", dt.datetime.now(dt.UTC))
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue_for_key(key.public_key(), SpiffeId("example.org", "default", "client"),
                              dt.datetime.now(dt.UTC), dt.timedelta(hours=1))
    (tmp_path / "ca.pem").write_bytes(ca.trust_bundle_pem())
    (tmp_path / "c.pem").write_bytes(issued.chain_pem())
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    mutual = {"mode": "MUTUAL", "caCertificates": str(tmp_path / "ca.pem"), "subjectAltNames": ["spiffe://example.org/ns/ext/sa/api"],
              "clientCertificate": str(tmp_path / "c.pem"), "privateKey": str(tmp_path / "k.pem")}
    config = sidecar_config(rule(mutual, port_tls={"mode": "SIMPLE", "caCertificates": str(tmp_path / "ca.pem")}))
    assert validate_with_envoy(tmp_path, config.values(), proxy) == ""
