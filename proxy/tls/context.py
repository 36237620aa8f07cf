"""SSL contexts for mutual TLS between sidecars, from PEM held in memory.

Rules:
- TLS 1.2 is the floor; 1.3 is preferred. Both sides present certificates and verify
  the peer's chain against the trust bundle (mTLS); hostnames are not checked, since
  workloads are identified by SPIFFE URI SANs, which the caller checks after the
  handshake with `peer_spiffe_ids` (Envoy's `match_typed_subject_alt_names`).
- Certificates and keys never touch the disk: Python's ssl module loads a chain only
  from a path, so they are handed over through an anonymous memory file
  (memfd_create) whose /proc/self/fd path is valid only in this process.
- A context is immutable once built; rotation builds a new one and swaps it, so
  connections in flight keep the context (and certificate) they started with.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from proxy.tls.peer_certificate import peer_uris


@contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_certificate(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and its key from memory (never from a file on disk)."""
    with _memory_file("tulle-chain", chain_pem) as chain, _memory_file("tulle-key", key_pem) as key:
        context.load_cert_chain(chain, key)


def _context(
    purpose: ssl.Purpose, chain_pem: bytes | None, key_pem: bytes | None, trust_bundle_pem: bytes | None,
    alpn: Sequence[str],
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if chain_pem is not None and key_pem is not None:
        load_certificate(context, chain_pem, key_pem)
    if trust_bundle_pem is not None:
        context.load_verify_locations(cadata=trust_bundle_pem.decode())
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def server_context(
    chain_pem: bytes, key_pem: bytes, trust_bundle_pem: bytes | None, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    """Downstream (inbound) side; with a trust bundle, a client certificate is required."""
    return _context(ssl.Purpose.CLIENT_AUTH, chain_pem, key_pem, trust_bundle_pem, alpn)


def client_context(
    chain_pem: bytes | None, key_pem: bytes | None, trust_bundle_pem: bytes, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    """Upstream (outbound) side; the server's chain is always verified."""
    return _context(ssl.Purpose.SERVER_AUTH, chain_pem, key_pem, trust_bundle_pem, alpn)


def peer_spiffe_ids(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[str, ...]:
    """The URI SANs of the verified peer certificate (empty when there is none)."""
    return peer_uris(ssl_object)
