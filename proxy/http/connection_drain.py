"""Draining one downstream HTTP/1.1 connection (Envoy's drain sequence).

Rules (Envoy 1.40 on HTTP/1.1): a connection starts draining when its idle timeout fires
(`downstream_cx_idle_timeout`) or its `max_connection_duration` is reached
(`downstream_cx_max_duration_reached`). While it drains, the response to a request carries
`connection: close`; `drain_timeout` after the drain started, the connection closes as soon
as no request is in flight. A connection draining idle therefore closes `drain_timeout`
after its idle timeout, as Envoy's does; one on which the client never sent a byte closes
at once instead (Envoy has no codec to drain yet).

One difference, kept on purpose: Envoy leaves a drained connection's socket open after a
`connection: close` response until the drain timer ends; tulle-proxy closes it after that
response, which a client honouring `connection: close` cannot tell apart.

`delayed_close_timeout` (1 s unless set, as in Envoy; 0 turns it off): a connection the proxy closes — after a
`connection: close` response, a protocol error, the end of a drain — keeps its socket open
after its last bytes, reading and dropping input, until the client closes it or the timeout
passes (then `downstream_cx_delayed_close_timeout`), so a client still sending does not
get a reset in place of the response.

Theory of operation: nothing here runs until a connection starts draining or closing; then
one loop timer per connection ends the drain or the delayed close. The connection manager's responses test the
connection's `draining` flag (proxy/http/connection_manager.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.http.downstream import DownstreamConnection


def start_drain(conn: DownstreamConnection) -> None:
    """Begin the drain: the next response closes the connection, and so does the drain
    timer once the connection is idle."""
    if conn.draining or conn.closed:
        return
    conn.draining = True
    manager = conn.manager
    manager.loop.call_later(manager.config.drain_timeout, _drain_timeout, conn)


def _drain_timeout(conn: DownstreamConnection) -> None:
    if not conn.closed and conn.active is None and not conn.has_queued_requests():
        conn.close()
    # otherwise the response in flight closes it (the connection is draining)


def delayed_close(conn: DownstreamConnection, transport: asyncio.Transport) -> None:
    """Close `transport` when the client closes its side, or after delayed_close_timeout."""
    conn.discard_input()
    manager = conn.manager
    manager.loop.call_later(manager.config.delayed_close_timeout, _delayed_close_timeout, conn, transport)


def _delayed_close_timeout(conn: DownstreamConnection, transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        conn.manager.stats.downstream_cx_delayed_close_timeout += 1
        transport.close()
