"""When tulle-proxy renews the certificate it made its own key for: at half of what is
left of the leaf's validity (the CA backdates not-before, so the midpoint comes early)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.tls.identity_client import renewal_delay

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def _leaf(not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(not_before).not_valid_after(not_after).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_renewal_comes_at_half_the_remaining_lifetime() -> None:
    leaf = _leaf(NOW - dt.timedelta(minutes=1), NOW + dt.timedelta(hours=24))
    assert renewal_delay(leaf, NOW) == dt.timedelta(hours=12)


def test_an_expired_certificate_is_renewed_at_once() -> None:
    leaf = _leaf(NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=1))
    assert renewal_delay(leaf, NOW) == dt.timedelta(0)
