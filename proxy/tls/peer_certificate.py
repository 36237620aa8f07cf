"""The verified peer of a TLS connection, as SAN checks, RBAC and the
x-forwarded-client-cert header see it.

Rules:
- The peer's identities are the URI SANs of its verified leaf certificate (SPIFFE IDs);
  a connection without TLS or without a client certificate has none and is not
  `authenticated`.
- x-forwarded-client-cert (Envoy's `forward_client_cert_details: SANITIZE_SET`): the
  proxy's own URI SAN as `By=`, the SHA-256 of the peer's DER certificate as `Hash=`,
  then the fields `set_current_client_cert_details` asks for (here `URI=`), joined by `;`.
- A connection's peer is read once (at its first request) and kept with the connection;
  its header values are made then, not per request.

Theory of operation: every connection from one peer presents the same certificate until
it rotates, so what is read from it is cached by its DER bytes (OpenSSL has verified the
chain by then; the cache only skips decoding it again). The cache is bounded: it is
cleared when full, and refills from the certificates in use.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from typing import TypeVar

LOCAL_URIS_ATTRIBUTE = "tulle_local_uris"   # set on the SSLContexts tulle-proxy builds
_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    uris: tuple[str, ...]
    sha256: str
    local_uris: tuple[str, ...]
    xfcc: str = field(init=False)        # x-forwarded-client-cert without URI=
    xfcc_uri: str = field(init=False)    # ... and with it

    def __post_init__(self) -> None:
        parts = [f"By={by}" for by in self.local_uris[:1]]
        parts.append(f"Hash={self.sha256}")
        object.__setattr__(self, "xfcc", ";".join(parts))
        parts.extend(f"URI={value}" for value in self.uris[:1])
        object.__setattr__(self, "xfcc_uri", ";".join(parts))


_uris_by_der: dict[bytes, tuple[str, ...]] = {}
_peers: dict[tuple[bytes, tuple[str, ...]], PeerCertificate] = {}


_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


def peer_uris(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[str, ...]:
    """The URI SANs of the verified peer certificate (empty when there is none)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return ()
    uris = _uris_by_der.get(der)
    if uris is None:
        decoded = ssl_object.getpeercert() or {}
        names: tuple[tuple[str, str], ...] = decoded.get("subjectAltName", ())  # type: ignore[assignment]
        uris = tuple(value for kind, value in names if kind == "URI")
        _remember(_uris_by_der, der, uris)
    return uris


def peer_certificate(ssl_object: ssl.SSLObject | None) -> PeerCertificate | None:
    """The verified client certificate of a TLS connection (None without one)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    local: tuple[str, ...] = getattr(ssl_object.context, LOCAL_URIS_ATTRIBUTE, ())
    peer = _peers.get((der, local))
    if peer is None:
        peer = PeerCertificate(peer_uris(ssl_object), hashlib.sha256(der).hexdigest(), local)
        _remember(_peers, (der, local), peer)
    return peer


def forwarded_client_cert(peer: PeerCertificate, uri: bool) -> str:
    """The x-forwarded-client-cert element describing `peer` (SANITIZE_SET)."""
    return peer.xfcc_uri if uri else peer.xfcc
