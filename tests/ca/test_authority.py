"""The CA issues SPIFFE SVIDs that verify against its trust bundle, and nothing else."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from control.ca.authority import CertificateAuthority, CsrRejected
from control.ca.spiffe import InvalidSpiffeId, SpiffeId

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
FRONTEND = SpiffeId("cluster.local", "shop", "frontend")


def csr_for(uri: str | None = None, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
    key = key or ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def verify_client(ca: CertificateAuthority, chain_pem: bytes, at: dt.datetime) -> list[str]:
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(x509.load_pem_x509_certificates(ca.trust_bundle_pem()))))
        .time(at)
        .build_client_verifier()
    )
    verified = verifier.verify(leaf, intermediates)
    assert verified.subjects is not None
    return [str(name.value) for name in verified.subjects]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


def test_the_root_key_is_written_with_mode_0600(ca: CertificateAuthority, tmp_path: Path) -> None:
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_a_restarted_control_plane_keeps_its_root(ca: CertificateAuthority, tmp_path: Path) -> None:
    again = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW + dt.timedelta(days=1))
    assert again.trust_bundle_pem() == ca.trust_bundle_pem()


def test_an_svid_carries_exactly_its_spiffe_id_and_verifies_against_the_bundle(ca: CertificateAuthority) -> None:
    issued = ca.issue(csr_for(), FRONTEND, NOW)
    assert verify_client(ca, issued.chain_pem(), NOW) == [str(FRONTEND)]
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical


def test_an_svid_lives_24_hours_by_default(ca: CertificateAuthority) -> None:
    cert = ca.issue(csr_for(), FRONTEND, NOW).certificate
    assert cert.not_valid_after_utc - NOW == dt.timedelta(hours=24)


def test_an_expired_svid_does_not_verify(ca: CertificateAuthority) -> None:
    issued = ca.issue(csr_for(), FRONTEND, NOW, ttl=dt.timedelta(seconds=20))
    with pytest.raises(verification.VerificationError):
        verify_client(ca, issued.chain_pem(), NOW + dt.timedelta(seconds=21))


def test_a_csr_asking_for_another_identity_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrRejected, match=re.escape("may only have spiffe://cluster.local/ns/shop/sa/frontend")):
        ca.issue(csr_for("spiffe://cluster.local/ns/kube-system/sa/admin"), FRONTEND, NOW)


def test_a_csr_asking_for_its_own_identity_is_signed(ca: CertificateAuthority) -> None:
    issued = ca.issue(csr_for(str(FRONTEND)), FRONTEND, NOW)
    assert verify_client(ca, issued.chain_pem(), NOW) == [str(FRONTEND)]


def test_an_identity_of_another_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrRejected, match="outside trust domain"):
        ca.issue(csr_for(), SpiffeId("evil.example", "shop", "frontend"), NOW)


def test_garbage_and_weak_keys_are_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrRejected, match="not a PEM"):
        ca.issue(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", FRONTEND, NOW)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CsrRejected, match="at least 2048"):
        ca.issue(csr_for(key=weak), FRONTEND, NOW)


def test_an_operator_supplied_intermediate_chains_to_its_root(tmp_path: Path) -> None:
    root = CertificateAuthority.load_or_create(tmp_path / "root", "cluster.local", NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tulle intermediate")])
    intermediate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(root.signer.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(root._key, hashes.SHA256())
    )
    (tmp_path / "int-cert.pem").write_bytes(intermediate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "int-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "int-key.pem").chmod(0o600)
    (tmp_path / "chain.pem").write_bytes(root.trust_bundle_pem())

    ca = CertificateAuthority.from_files(
        tmp_path / "int-cert.pem", tmp_path / "int-key.pem", "cluster.local", tmp_path / "chain.pem")
    issued = ca.issue(csr_for(), FRONTEND, NOW)

    assert ca.trust_bundle_pem() == root.trust_bundle_pem()
    assert verify_client(ca, issued.chain_pem(), NOW) == [str(FRONTEND)]


def test_a_ca_key_readable_by_others_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    (tmp_path / "ca" / "ca-key.pem").chmod(0o644)
    with pytest.raises(PermissionError, match="must not be readable"):
        CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


@pytest.mark.parametrize("uri", [
    "spiffe://cluster.local/ns/shop",
    "spiffe://cluster.local/ns/Shop/sa/frontend",
    "https://cluster.local/ns/shop/sa/frontend",
    "spiffe://cluster.local/ns/shop/sa/frontend?x=1",
])
def test_malformed_spiffe_ids_are_rejected(uri: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(uri)


def test_a_spiffe_id_round_trips_through_its_uri() -> None:
    assert SpiffeId.parse(str(FRONTEND)) == FRONTEND
