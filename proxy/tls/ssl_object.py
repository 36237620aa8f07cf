"""The SSLObject of every TLS connection tulle-proxy makes: its per-record methods are
`_ssl`'s own, and the peer certificate it decodes for the transport is decoded once per
certificate.

Why (per-record methods): uvloop's SSL transport (and asyncio's) calls `pending`, `read`
and `write` on the connection's SSLObject for every record it carries, and `do_handshake`
for every flight of a handshake; ssl.SSLObject defines each as a Python method whose only
work is to call the same method of the native `_ssl._SSLSocket` it wraps. A request
through two sidecars makes at least six such calls (each TLS endpoint writes one record,
reads one and asks what is pending), a Python frame each, and a handshake flight that
waits for the peer raises through one more (a traceback entry). Binding the native
methods on the instance skips those frames; the transport binds them once, right after
the SSLObject is made (uvloop's `_start_handshake`).

Why (peer certificate): both transports read `getpeercert()` when a handshake completes
(their `peercert` extra info), which decodes the peer's whole certificate into a dict
(~13 µs of a resumed handshake pair's CPU here); every connection from one peer presents
the same certificate until it rotates, so the decoded dict is cached by the certificate's
DER bytes (OpenSSL has verified the chain by then; the cache only skips decoding it again).

Rules:
- `read(size, buffer)` takes its size, as both transports always pass it (Python's
  wrapper defaulted it to 1024); everything else is ssl.SSLObject's.
- `getpeercert()` answers as ssl.SSLObject's does: None without a peer certificate, {}
  when the context does not verify peers, else the decoded certificate (a copy per call).
  The cache is bounded: cleared when full, it refills from the certificates in use.
- Subclasses (session resumption, the listener's current context) override `_create` and
  call this one through super(), so every connection gets the native methods.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

_CACHE_SIZE: Final = 1024
_decoded_by_der: dict[bytes, dict[str, Any]] = {}


class NativeSSLObject(ssl.SSLObject):
    """An SSLObject whose per-record methods are the native object's."""

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                server_hostname: str | None = None, session: ssl.SSLSession | None = None,
                context: ssl.SSLContext | None = None) -> Any:
        made = super()._create(incoming, outgoing, server_side, server_hostname,  # type: ignore[misc]
                               session=session, context=context)
        native = made._sslobj
        made.read, made.write, made.pending = native.read, native.write, native.pending
        made.do_handshake = native.do_handshake
        return made

    def getpeercert(self, binary_form: bool = False) -> Any:
        native = self._sslobj   # type: ignore[attr-defined]
        if binary_form or self.context.verify_mode == ssl.CERT_NONE:
            return native.getpeercert(binary_form)
        der = native.getpeercert(True)   # raises ValueError before the handshake, as Python's
        if der is None:
            return None
        decoded = _decoded_by_der.get(der)
        if decoded is None:
            decoded = native.getpeercert(False)
            if len(_decoded_by_der) >= _CACHE_SIZE:
                _decoded_by_der.clear()
            _decoded_by_der[der] = decoded
        return dict(decoded)
