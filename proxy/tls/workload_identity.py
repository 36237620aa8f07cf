"""The sidecar's own identity: a private key generated here, a CSR sent to the CA, and
when to renew the certificate that comes back.

Rules:
- The private key is generated in this process and never leaves it (only the CSR,
  which holds the public key, is sent).
- A certificate is renewed at half its remaining lifetime, as Istio's agent does: late
  enough to keep CA load low, early enough to survive a CA outage of half a lifetime.
- A renewal that fails is retried with capped exponential back-off; the old
  certificate keeps serving until it expires.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

RETRY_BASE = dt.timedelta(seconds=1)
RETRY_MAX = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    key_pem: bytes
    csr_pem: bytes


def new_key_and_csr() -> KeyAndCsr:
    """A fresh P-256 key and a CSR with an empty subject: the CA decides the identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return KeyAndCsr(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        csr.public_bytes(serialization.Encoding.PEM),
    )


def renewal_time(certificate_pem: bytes, now: dt.datetime | None = None) -> dt.datetime:
    """When to renew: half of what is left of the leaf's validity from `now` (by default
    from its not-before, i.e. the middle of its lifetime). Callers pass the time they got
    it: the CA backdates not-before for clock skew, so for a lifetime of seconds the
    midpoint would come at once."""
    leaf = x509.load_pem_x509_certificate(certificate_pem)
    start = leaf.not_valid_before_utc if now is None else now
    return start + max(leaf.not_valid_after_utc - start, dt.timedelta(0)) / 2


def retry_delay(failures: int) -> dt.timedelta:
    """Back-off after `failures` consecutive failed renewals (1, 2, 4 … 60 s)."""
    return min(RETRY_BASE * (2 ** max(failures - 1, 0)), RETRY_MAX)
