"""Direct calls into the OpenSSL behind Python's ssl module, for what that module cannot
do: hold TLS sessions by reference, bound a server's session cache, keep a session
resumable after an unclean close, and order the TLS 1.3 cipher suites.

Why (sessions): CPython copies an SSL_SESSION (i2d then d2i, its workaround for an
OpenSSL 1.1.0 bug, openssl#1550) both when `SSLObject.session` is read and when a session is offered
with `session=`. The copy decodes the peer's certificate again, which OpenSSL 3.0 does
through its provider decoders (OSSL_DECODER_CTX_new_for_pkey): ~120 µs per copy here. A
client resuming one session per new connection paid it twice, ~240 µs of the ~540 µs a
resumed mTLS handshake costs both sidecars together (measured in memory, TLS 1.3,
P-256). OpenSSL itself shares sessions by reference (SSL_set_session takes its own
reference) and copies one without decoding anything (SSL_SESSION_dup shares the
certificates). A pooled session must still be a copy, not the connection's
own: OpenSSL marks a connection's session not resumable when the connection is freed
without a close_notify sent (ssl_clear_bad_session), as an upstream connection closed by
abort() is.
Likewise Python cannot size a server's session cache (SSL_CTX_sess_set_cache_size); with
a size, OpenSSL evicts the oldest session when adding one to a full cache.

Why (cipher suites): Python sets TLS 1.3 suites only through OpenSSL's default order,
AES-256-GCM with SHA-384 first. Its key schedule (HKDF on SHA-384) costs a resumed
handshake pair ~25 µs more than AES-128-GCM with SHA-256 (~285 against ~260 µs, in
memory), the suite BoringSSL, so Envoy, puts first where AES is in hardware.

Theory of operation: Python's `_ssl` objects are C structs whose native pointer follows
the object header: `_ssl._SSLContext` {PyObject_HEAD; SSL_CTX *ctx} and
`_ssl._SSLSocket` {PyObject_HEAD; PyObject *Socket; SSL *ssl} (CPython 3.11's
Modules/_ssl.c). They are read with ctypes and called into the libssl that `_ssl` is
linked with (the same soname, so the same loaded library). A throwaway context and
SSLObject check that reading once, when first asked (`available()`):
SSL_get_SSL_CTX of the object's SSL must be the context's SSL_CTX. If it is not (another
Python, another libssl), callers keep Python's API (proxy/tls/session_resumption.py).

Rules:
- A `Session` owns one reference to an SSL_SESSION and drops it when collected; offering
  it to a connection gives that connection its own reference.
- `keep_resumable` stops OpenSSL from dropping a server connection's session from the
  cache when the connection is freed without having sent close_notify: its client holds
  that session's ticket. RFC 4346 (TLS 1.1) dropped the rule that such a session must
  not be resumed, and RFC 8446 has none.
- `prefer_aes128` reorders OpenSSL's default TLS 1.3 suites; it adds and removes none.
- `copy` gives a session of its own (SSL_SESSION_dup: ~3 µs against Python's ~120 µs);
  `holds` tells whether a connection still uses the very session it was offered (a TLS
  1.3 connection that got no new ticket).
"""

from __future__ import annotations

import ctypes
import functools
import ssl
from typing import Final

_SSL_CTRL_SET_SESS_CACHE_SIZE: Final = 42    # ssl.h; SSL_CTX_sess_set_cache_size is this macro
_SSL_CTRL_GET_SESS_CACHE_SIZE: Final = 43
_SSL_SENT_SHUTDOWN: Final = 1
TLS13_CIPHERSUITES: Final = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
_CONTEXT_OFFSET: Final = object.__basicsize__                        # SSL_CTX *ctx
_SSL_OFFSET: Final = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)   # after PyObject *Socket


def _load() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libssl.so.3")
    except OSError:
        return None
    pointer = ctypes.c_void_p
    for name, result, arguments in (
            ("SSL_get_SSL_CTX", pointer, [pointer]),
            ("SSL_get_session", pointer, [pointer]),
            ("SSL_SESSION_dup", pointer, [pointer]),
            ("SSL_set_session", ctypes.c_int, [pointer, pointer]),
            ("SSL_SESSION_free", None, [pointer]),
            ("SSL_SESSION_has_ticket", ctypes.c_int, [pointer]),
            ("SSL_get_shutdown", ctypes.c_int, [pointer]),
            ("SSL_CTX_set_ciphersuites", ctypes.c_int, [pointer, ctypes.c_char_p]),
            ("SSL_set_shutdown", None, [pointer, ctypes.c_int]),
            ("SSL_CTX_ctrl", ctypes.c_long, [pointer, ctypes.c_int, ctypes.c_long, pointer])):
        function = getattr(lib, name, None)
        if function is None:
            return None
        function.restype, function.argtypes = result, arguments
    return lib


def _context_pointer(context: ssl.SSLContext) -> int | None:
    return ctypes.c_void_p.from_address(id(context) + _CONTEXT_OFFSET).value


def _ssl_pointer(ssl_object: ssl.SSLObject) -> int | None:
    native = ssl_object._sslobj   # type: ignore[attr-defined]   # the _ssl._SSLSocket
    return ctypes.c_void_p.from_address(id(native) + _SSL_OFFSET).value


_lib: ctypes.CDLL | None = None


@functools.cache
def available() -> bool:
    """Whether OpenSSL's session calls can be reached from here (checked once)."""
    global _lib
    if ssl.OPENSSL_VERSION_INFO < (1, 1, 1) or (lib := _load()) is None:
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    expected = _context_pointer(context)
    if expected is None or lib.SSL_get_SSL_CTX(_ssl_pointer(probe)) != expected:
        return False
    _lib = lib
    return True


class Session:
    """One reference to an OpenSSL SSL_SESSION."""

    __slots__ = ("_pointer",)

    def __init__(self, pointer: int) -> None:
        self._pointer = pointer

    def __del__(self) -> None:
        if _lib is not None:   # None only while the interpreter is being torn down
            _lib.SSL_SESSION_free(self._pointer)

    @property
    def has_ticket(self) -> bool:
        assert _lib is not None
        return bool(_lib.SSL_SESSION_has_ticket(self._pointer))


def copy(ssl_object: ssl.SSLObject) -> Session | None:
    """A copy of the connection's session, sharing its certificates; None before a handshake."""
    assert _lib is not None
    own = _lib.SSL_get_session(_ssl_pointer(ssl_object))   # borrowed
    pointer = _lib.SSL_SESSION_dup(own) if own else None
    return Session(pointer) if pointer else None


def holds(ssl_object: ssl.SSLObject, session: Session) -> bool:
    """Whether the connection's session is `session` itself (not a newer one)."""
    assert _lib is not None
    return bool(_lib.SSL_get_session(_ssl_pointer(ssl_object)) == session._pointer)


def offer(ssl_object: ssl.SSLObject, session: Session) -> bool:
    """Offer `session` to a client connection before its handshake (SSL_set_session)."""
    assert _lib is not None
    return bool(_lib.SSL_set_session(_ssl_pointer(ssl_object), session._pointer))


def bound_cache(context: ssl.SSLContext, size: int) -> bool:
    """Bound a server context's session cache to `size` sessions, the oldest evicted first
    (False: not possible here)."""
    if not available():
        return False
    assert _lib is not None
    pointer = _context_pointer(context)
    _lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)
    return bool(_lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_SIZE, 0, None) == size)


def keep_resumable(ssl_object: ssl.SSLObject) -> None:
    """Let the connection's session outlive an unclean close (SSL_SENT_SHUTDOWN set: the
    connection must not write any more)."""
    assert _lib is not None
    native = _ssl_pointer(ssl_object)
    _lib.SSL_set_shutdown(native, _lib.SSL_get_shutdown(native) | _SSL_SENT_SHUTDOWN)


def prefer_aes128(context: ssl.SSLContext) -> None:
    """Offer (or choose) the TLS 1.3 suites in TLS13_CIPHERSUITES' order: all of OpenSSL's
    defaults, AES-128-GCM first. Nothing changes where OpenSSL cannot be reached."""
    if available():
        assert _lib is not None
        _lib.SSL_CTX_set_ciphersuites(_context_pointer(context), TLS13_CIPHERSUITES)
