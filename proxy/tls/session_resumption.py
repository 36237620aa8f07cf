"""Client-side TLS session resumption: a new upstream connection offers the session of the
last one made with the same SSLContext.

Theory of operation: a full mTLS handshake costs both sides a certificate signature and a
chain verification; a resumed one (a TLS 1.3 PSK from a session ticket, or a TLS 1.2
session) costs neither, which is what Envoy's upstream connections do by default. asyncio
(and uvloop) build the SSLObject themselves, with no way to pass `session=`; but they build
it through `context.wrap_bio`, which asks `context.sslobject_class` — so a client context
gets `ResumingSSLObject`, whose constructor offers the context's remembered session. The
pool calls `remember` once a connection has carried its first exchange (a TLS 1.3 ticket
arrives after the handshake, so it is read by then). One session serves every connection
until the server stops accepting it (TLS 1.3 tickets are not single-use for OpenSSL's and
BoringSSL's servers); a connection that could not resume leaves its own.

Rules: a session is offered only to the SSLContext that made it (a rotated certificate or
trust bundle builds a new context, so an old session is never offered with new secrets);
the server may always refuse it, and then the handshake is a full one; the peer's
certificate (SAN checks, x-forwarded-client-cert) is the one the session recorded.
"""

from __future__ import annotations

import ssl
from typing import Any

_SESSION = "_tulle_resumable_session"


class ResumingSSLObject(ssl.SSLObject):
    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                server_hostname: str | None = None, session: ssl.SSLSession | None = None,
                context: ssl.SSLContext | None = None) -> Any:
        if session is None and not server_side and context is not None:
            session = getattr(context, _SESSION, None)
        return super()._create(incoming, outgoing, server_side, server_hostname,  # type: ignore[misc]
                               session=session, context=context)


def enable(context: ssl.SSLContext) -> None:
    """Make a client context offer the last session it remembered."""
    context.sslobject_class = ResumingSSLObject
    setattr(context, _SESSION, None)


def remember(ssl_object: ssl.SSLObject | None) -> None:
    """Keep the connection's session (with its ticket) for the next connections, unless it
    resumed the one kept (then that one still works: reading a session costs CPython a
    copy of it, certificates included)."""
    if ssl_object is None or ssl_object.session_reused:
        return
    session = ssl_object.session
    if session is not None and (session.has_ticket or ssl_object.version() == "TLSv1.2"):
        setattr(ssl_object.context, _SESSION, session)
