"""Mutual TLS between two sidecars' contexts, with SVIDs from tulle-control's CA."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from proxy.tls.context import client_context, peer_spiffe_ids, server_context
from proxy.tls.inspector import Detected, detect
from proxy.tls.workload_identity import new_key_and_csr, renewal_time, retry_delay

NOW = dt.datetime.now(dt.UTC)
FRONTEND = SpiffeId("cluster.local", "shop", "frontend")
CATALOG = SpiffeId("cluster.local", "shop", "catalog")


def svid(ca: CertificateAuthority, identity: SpiffeId, now: dt.datetime = NOW,
         ttl: dt.timedelta = dt.timedelta(hours=1)) -> tuple[bytes, bytes]:
    pair = new_key_and_csr()
    return ca.issue(pair.csr_pem, identity, now, ttl).chain_pem(), pair.key_pem


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what the server saw of the client, what the client saw of the server); raises on failure."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = peer_spiffe_ids(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen["error"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                client.wrap_socket(raw) as tls:
            server_ids = peer_spiffe_ids(tls)
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(timeout=5)
        listener.close()
    return seen["client"], server_ids  # type: ignore[return-value]


def test_each_side_sees_the_others_spiffe_id(ca: CertificateAuthority) -> None:
    server = server_context(*svid(ca, CATALOG), ca.trust_bundle_pem())
    client = client_context(*svid(ca, FRONTEND), ca.trust_bundle_pem())
    assert handshake(server, client) == ((str(FRONTEND),), (str(CATALOG),))


def test_a_client_of_another_trust_domain_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other", "evil.example", NOW)
    server = server_context(*svid(ca, CATALOG), ca.trust_bundle_pem())
    client = client_context(*svid(other, SpiffeId("evil.example", "shop", "frontend")), ca.trust_bundle_pem())
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(server, client)


def test_a_client_without_a_certificate_is_refused(ca: CertificateAuthority) -> None:
    server = server_context(*svid(ca, CATALOG), ca.trust_bundle_pem())
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(server, client_context(None, None, ca.trust_bundle_pem()))


def test_an_expired_certificate_is_refused(ca: CertificateAuthority) -> None:
    server = server_context(*svid(ca, CATALOG), ca.trust_bundle_pem())
    expired = svid(ca, FRONTEND, now=NOW - dt.timedelta(hours=2), ttl=dt.timedelta(minutes=30))
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(server, client_context(*expired, ca.trust_bundle_pem()))


def test_tls_below_1_2_is_not_offered(ca: CertificateAuthority) -> None:
    assert server_context(*svid(ca, CATALOG), None).minimum_version == ssl.TLSVersion.TLSv1_2


def test_renewal_is_due_at_half_the_lifetime(ca: CertificateAuthority) -> None:
    chain, _ = svid(ca, FRONTEND, ttl=dt.timedelta(seconds=20))
    leaf = x509.load_pem_x509_certificate(chain)
    assert renewal_time(chain) == leaf.not_valid_before_utc + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2


def test_failed_renewals_back_off_up_to_a_minute() -> None:
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]


def test_the_csr_carries_the_public_key_only_and_asks_for_no_name() -> None:
    pair = new_key_and_csr()
    csr = x509.load_pem_x509_csr(pair.csr_pem)
    assert b"PRIVATE KEY" not in pair.csr_pem
    assert len(csr.extensions) == 0 and len(csr.subject) == 0


@pytest.mark.parametrize(("data", "detected"), [
    (b"", Detected.NEED_MORE),
    (b"GET / HTTP/1.1\r\n", Detected.PLAINTEXT),
    (b"\x16\x03", Detected.NEED_MORE),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", Detected.TLS),
    (b"\x16\x03\x01\x02\x00\x02", Detected.PLAINTEXT),
])
def test_the_inspector_tells_a_client_hello_from_plaintext(data: bytes, detected: Detected) -> None:
    assert detect(data) is detected


def test_the_inspector_recognises_a_real_client_hello(ca: CertificateAuthority) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(None, None, ca.trust_bundle_pem()).wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert detect(outgoing.read()) is Detected.TLS
