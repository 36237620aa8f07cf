"""The certificate authority: signs workload CSRs into short-lived X.509 SVIDs.

Theory of operation:
- The signing certificate is either a self-signed root that tulle-control creates on
  first start under its state dir, or an operator-supplied root or intermediate (with
  the chain up to the root). Its private key is read from, or written to, a file of
  mode 0600 and never leaves this process.
- A workload keeps its own private key and sends a CSR. The caller of `issue` has
  already decided which identity the workload may have (see `attestation`); the CSR's
  own requests are only checked against it: a CSR that asks for any other SAN is
  refused, so nobody can smuggle a second identity into a certificate.
- An SVID carries exactly one URI SAN (the SPIFFE ID, critical, since the subject is
  empty), is usable for TLS client and server authentication, and lives `ttl`
  (default 24 h), starting one minute in the past to absorb clock skew.
- Time is passed in, so tests drive expiry and rotation with a fake clock.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control.ca.spiffe import SpiffeId

DEFAULT_TTL = dt.timedelta(hours=24)
ROOT_TTL = dt.timedelta(days=3650)
CLOCK_SKEW = dt.timedelta(minutes=1)

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CsrRejected(ValueError):
    """A CSR the CA will not sign; the message says why."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    identity: SpiffeId
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the signer and any intermediates, leaf excluded

    def chain_pem(self) -> bytes:
        """The leaf followed by its issuers, as TLS stacks want it."""
        certs = (self.certificate, *self.chain)
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class CertificateAuthority:
    def __init__(
        self,
        signer: x509.Certificate,
        key: SigningKey,
        trust_domain: str,
        chain: tuple[x509.Certificate, ...] = (),
    ) -> None:
        self.signer = signer
        self._key = key
        self.trust_domain = trust_domain
        self._chain = chain  # intermediates above the signer, then the root

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return (self._chain[-1],) if self._chain else (self.signer,)

    def trust_bundle_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.roots)

    @classmethod
    def load_or_create(cls, state_dir: Path, trust_domain: str, now: dt.datetime) -> CertificateAuthority:
        """The CA of a state dir: created (self-signed root) on first use, loaded after."""
        key_path, cert_path = state_dir / "ca-key.pem", state_dir / "ca-cert.pem"
        if key_path.exists() and cert_path.exists():
            return cls.from_files(cert_path, key_path, trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tulle root CA"),
        ])
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ROOT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
        cert_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        return cls(root, key, trust_domain)

    @classmethod
    def from_files(
        cls, cert_path: Path, key_path: Path, trust_domain: str, chain_path: Path | None = None
    ) -> CertificateAuthority:
        """An operator-supplied root, or an intermediate with its chain up to the root."""
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{key_path}: CA key must not be readable by group or others (mode {mode:o})")
        signer = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{key_path}: CA key must be EC or RSA")
        if key.public_key().public_numbers() != signer.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError(f"{key_path} does not belong to {cert_path}")
        chain = tuple(x509.load_pem_x509_certificates(chain_path.read_bytes())) if chain_path else ()
        return cls(signer, key, trust_domain, chain)

    def issue(
        self, csr_pem: bytes, identity: SpiffeId, now: dt.datetime, ttl: dt.timedelta = DEFAULT_TTL
    ) -> IssuedCertificate:
        if identity.trust_domain != self.trust_domain:
            raise CsrRejected(f"identity {identity} is outside trust domain {self.trust_domain!r}")
        csr = _load_csr(csr_pem)
        _check_requested_names(csr, identity)
        return self._sign(csr.public_key(), identity, now, ttl, ())  # type: ignore[arg-type]

    def issue_for_key(
        self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, identity: SpiffeId, now: dt.datetime,
        ttl: dt.timedelta, dns_names: tuple[str, ...] = (),
    ) -> IssuedCertificate:
        """A certificate for a key this process holds (tulle-control's own serving
        certificate), with DNS names beside the SPIFFE ID so that clients checking the
        host name they dialled accept it."""
        if identity.trust_domain != self.trust_domain:
            raise CsrRejected(f"identity {identity} is outside trust domain {self.trust_domain!r}")
        return self._sign(public_key, identity, now, ttl, dns_names)

    def _sign(
        self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, identity: SpiffeId, now: dt.datetime,
        ttl: dt.timedelta, dns_names: tuple[str, ...],
    ) -> IssuedCertificate:
        not_after = min(now + ttl, self.signer.not_valid_after_utc)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(identity))]
        names += [x509.DNSName(d) for d in dns_names]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.signer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(identity, certificate, (self.signer, *self._chain[:-1]))


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise CsrRejected(f"not a PEM certificate signing request: {error}") from None
    if not csr.is_signature_valid:
        raise CsrRejected("the CSR's signature does not match its public key")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise CsrRejected(f"RSA keys must have at least 2048 bits, not {key.key_size}")
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CsrRejected(f"unsupported key type {type(key).__name__}: use EC (P-256/P-384) or RSA")
    return csr


def _check_requested_names(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    requested = [str(name.value) for name in sans]
    if requested != [str(identity)]:
        raise CsrRejected(f"CSR asks for {requested}, but the caller may only have {identity}")


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=True,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def _write_private(path: Path, data: bytes) -> None:
    """Creates the file with mode 0600 from the start: no window where it is readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
