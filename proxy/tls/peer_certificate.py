"""The verified peer of a downstream TLS connection, as RBAC and the
x-forwarded-client-cert header see it.

Rules:
- The peer's identities are the URI SANs of its verified leaf certificate (SPIFFE IDs);
  a connection without TLS or without a client certificate has none and is not
  `authenticated`.
- x-forwarded-client-cert (Envoy's `forward_client_cert_details: SANITIZE_SET`): the
  proxy's own URI SAN as `By=`, the SHA-256 of the peer's DER certificate as `Hash=`,
  then the fields `set_current_client_cert_details` asks for (here `URI=`), joined by `;`.
- A connection's peer is read once (at its first request) and kept with the connection.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass

LOCAL_URIS_ATTRIBUTE = "tulle_local_uris"   # set on the SSLContexts tulle-proxy builds


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    uris: tuple[str, ...]
    sha256: str
    local_uris: tuple[str, ...]


def peer_certificate(ssl_object: ssl.SSLObject | None) -> PeerCertificate | None:
    """The verified client certificate of a TLS connection (None without one)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    decoded = ssl_object.getpeercert() or {}
    names: tuple[tuple[str, str], ...] = decoded.get("subjectAltName", ())  # type: ignore[assignment]
    local = getattr(ssl_object.context, LOCAL_URIS_ATTRIBUTE, ())
    return PeerCertificate(tuple(value for kind, value in names if kind == "URI"),
                           hashlib.sha256(der).hexdigest(), local)


def forwarded_client_cert(peer: PeerCertificate, uri: bool) -> str:
    """The x-forwarded-client-cert element describing `peer` (SANITIZE_SET)."""
    parts = [f"By={by}" for by in peer.local_uris[:1]]
    parts.append(f"Hash={peer.sha256}")
    if uri:
        parts.extend(f"URI={value}" for value in peer.uris[:1])
    return ";".join(parts)
