"""TLS session resumption between sidecars: clients offer a fresh session from the tickets
they were given, servers keep the sessions they issued in a bounded cache.

Theory of operation: a full mTLS handshake costs both sides a certificate signature and a
chain verification; a resumed one (a TLS 1.3 PSK from a session ticket, or a TLS 1.2
session) costs neither, which is what Envoy's upstream connections do by default. What a
resumption costs then depends on the ticket: a stateless ticket carries the whole session,
the client's certificate included, and OpenSSL 3.0 decodes that certificate (its public
key through the provider decoders) on every resumption: the biggest part of a server's
resumed handshake. So servers issue stateful tickets (OP_NO_TICKET: the ticket names a
session in the server context's cache), found by a hash lookup. The server issues a new
ticket on every handshake, and a client offers each ticket once, as RFC 8446 (C.4) asks;
so a client keeps a small pool of fresh sessions per SSLContext, takes one for each new
connection and gives back the one that connection was issued.

asyncio (and uvloop) build the SSLObject themselves, with no way to pass `session=`; but
they build it through `context.wrap_bio`, which asks `context.sslobject_class`, so a client
context gets `ResumingSSLObject`, whose constructor takes a session from the pool. The
upstream pool calls `remember` once a connection has carried its first exchange (a TLS 1.3
ticket arrives after the handshake, so it is read by then).

Sessions are held by reference in OpenSSL (proxy/tls/openssl_direct.py): Python's
`SSLObject.session` and `session=` each copy one, decoding the peer's certificate again
(~120 µs each), which took ~240 µs of the ~540 µs of CPU a resumed handshake costs both
sidecars. Where that is not possible (not openssl_direct.available()), Python's copies
are used. Likewise a server's cache is bounded in OpenSSL, which evicts the oldest session
(the ones clients still hold are the newest); only where it cannot be bounded is a full
cache replaced with an empty one, which costs every ticket outstanding a full handshake
(in the bench, ~1 in 7 new connections).

Rules:
- A session is offered only to the SSLContext that made it (a rotated certificate or trust
  bundle builds a new context, so an old session is never offered with new secrets); the
  server may always refuse it, and then the handshake is a full one; the peer's
  certificate (SAN checks, x-forwarded-client-cert) is the one the session recorded.
- TLS 1.3: a session is offered once; a connection gives back its newest ticket, never the
  one it was offered. TLS 1.2: a session id may be offered again, so a connection gives
  back the session it used.
- A server keeps a session resumable after its connection ended without close_notify
  (`served`), as TLS 1.1 and later allow: a client that aborts its connection still
  resumes with the ticket it was issued.
- Bounded memory: a client context pools at most CLIENT_POOL sessions (newest kept); a
  server context's cache holds at most SERVER_CACHE sessions (OpenSSL's default is 20,480
  of ~11 KiB each). A resumed TLS 1.3 session stays in the server's cache (OpenSSL removes
  it only when early data is enabled), so the cache gains one session per handshake and
  is always full under load.
"""

from __future__ import annotations

import ssl
from collections import deque
from typing import Any, Final

from proxy.tls import openssl_direct
from proxy.tls.openssl_direct import Session
from proxy.tls.ssl_object import NativeSSLObject

CLIENT_POOL: Final = 64      # a busy cluster's concurrent new connections each take one
SERVER_CACHE: Final = 512    # ~6 MiB of cached sessions (each holds the client's certificate)
_POOL = "_tulle_session_pool"
_BOUNDED = "_tulle_session_cache_bounded"
AnySession = Session | ssl.SSLSession


class ResumingSSLObject(NativeSSLObject):
    """A client SSLObject that offers a session from its context's pool."""

    _offered: AnySession | None = None

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                server_hostname: str | None = None, session: ssl.SSLSession | None = None,
                context: ssl.SSLContext | None = None) -> Any:
        offered: AnySession | None = session
        if session is None and not server_side and context is not None:
            pool: deque[AnySession] | None = getattr(context, _POOL, None)
            if pool:
                offered = pool.pop()
        if isinstance(offered, ssl.SSLSession):
            session = offered
        made = super()._create(incoming, outgoing, server_side, server_hostname,
                               session=session, context=context)
        if isinstance(offered, Session) and not openssl_direct.offer(made, offered):
            offered = None
        made._offered = offered
        return made


def enable(context: ssl.SSLContext) -> None:
    """Make a client context offer the sessions its connections were issued."""
    context.sslobject_class = ResumingSSLObject
    setattr(context, _POOL, deque(maxlen=CLIENT_POOL))


def serve_stateful(context: ssl.SSLContext) -> None:
    """Make a server context issue stateful tickets, one per handshake, from a bounded cache."""
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 1
    setattr(context, _BOUNDED, openssl_direct.bound_cache(context, SERVER_CACHE))


def remember(ssl_object: ssl.SSLObject | None) -> None:
    """Give the connection's newest session back to its context's pool (see the rules)."""
    if ssl_object is None:
        return
    pool: deque[AnySession] | None = getattr(ssl_object.context, _POOL, None)
    if pool is None:
        return
    offered = getattr(ssl_object, "_offered", None)
    if ssl_object.version() == "TLSv1.2":
        if isinstance(offered, ssl.SSLSession) and ssl_object.session_reused:
            pool.append(offered)   # the same session id again (reading it back would copy it)
        elif (session := _copy(ssl_object)) is not None:
            pool.append(session)
        return
    session = _copy(ssl_object)
    if session is not None and session.has_ticket and not _still_offered(ssl_object, session, offered):
        pool.append(session)


def _copy(ssl_object: ssl.SSLObject) -> AnySession | None:
    # OpenSSL's copy shares the certificates; Python's re-decodes them (~120 µs)
    return openssl_direct.copy(ssl_object) if openssl_direct.available() else ssl_object.session


def _still_offered(ssl_object: ssl.SSLObject, session: AnySession, offered: AnySession | None) -> bool:
    """Whether the connection got no new ticket, so `session` is the spent offered one."""
    if isinstance(offered, Session):
        return openssl_direct.holds(ssl_object, offered)
    return session == offered   # Python compares session ids


def served(ssl_object: ssl.SSLObject) -> None:
    """A server connection is being freed: keep its session (whose ticket its client holds)
    in the cache even if it ended without a close_notify sent, as uvloop ends one on the
    peer's EOF. Else OpenSSL drops it then, and the client's next connection is a full
    handshake whenever the free came first (~8% of new connections in the bench)."""
    if openssl_direct.available() and hasattr(ssl_object, "_sslobj"):
        openssl_direct.keep_resumable(ssl_object)


def cache_full(context: ssl.SSLContext) -> bool:
    """Whether a server context's session cache, unbounded in OpenSSL, has reached SERVER_CACHE
    (then the transport socket replaces the context)."""
    return not getattr(context, _BOUNDED, False) and context.session_stats()["number"] >= SERVER_CACHE
