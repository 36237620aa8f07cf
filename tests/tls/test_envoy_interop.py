"""tulle-proxy as a mesh sidecar next to real Envoy: mTLS in both directions with
certificates from tulle-control's CA delivered by the node agent's SDS code, each side
seeing the other's SPIFFE ID. (tulle-proxy's STRICT inbound port and its
AuthorizationPolicy enforcement are tested beside Envoy's, in tests/mtls/test_envoy_mtls.py.)"""

from __future__ import annotations

from pathlib import Path

from tests.mtls.harness import Sidecar
from tests.mtls.test_envoy_mtls import (
    FRONTEND_ID,
    Lab,
    make_lab,
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
