"""Accepting a listener's connections through its listener filters and handing each to
the filter chain that matches it (Envoy's listener, for listeners that have listener
filters, several chains, or `use_original_dst`; a single-chain listener without them is
bound as a plain asyncio server instead, which is cheaper).

Theory of operation: an accept loop takes each new socket and, before any transport
owns it:
1. original_dst: reads SO_ORIGINAL_DST (the address before nftables redirected it; a
   connection that was not redirected keeps its local address);
2. use_original_dst: if that destination is another listener's address (a listener with
   `bind_to_port: false`), the socket goes to that listener, which continues at step 3;
3. tls_inspector: peeks (MSG_PEEK, nothing consumed) at the first bytes until the
   ClientHello is complete, for the transport protocol, SNI and ALPN — bounded by
   listener_filters_timeout;
4. selects the filter chain (proxy/filter_chain_match.py) or the default chain, and
   makes the asyncio transport on the socket: TLS with the chain's current SSL context
   (its DownstreamTlsContext), or plaintext. The chain's protocol sees the original
   destination as the connection's local address, as Envoy's filters do.
A connection no chain accepts is closed (`no_filter_chain_match`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from proxy.filter_chain_match import ConnectionFacts, select
from proxy.listener import FilterChainConfig, ListenerConfig
from proxy.original_destination import original_destination
from proxy.stats import ListenerStats
from proxy.tls.client_hello import MAX_HELLO, Inspection, inspect
from proxy.tls.transport_socket import SecretNotReady, TlsTransport

log = logging.getLogger("tulle.proxy.listener")

Destination = tuple[str, int]
_PARTIAL_WAIT = 0.002   # a ClientHello split across segments: look again shortly


@dataclass(slots=True)
class ChainRuntime:
    """A filter chain ready to serve: `protocol(destination, server_name)` builds its asyncio
    protocol for a connection to `destination` whose TLS ClientHello named `server_name`
    (the SNI the tls_inspector read; "" without one)."""

    config: FilterChainConfig
    protocol: Callable[[Destination | None, str], asyncio.BaseProtocol]
    tls: TlsTransport | None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Dispatcher:
    def __init__(self, config: ListenerConfig, chains: list[ChainRuntime], default: ChainRuntime | None,
                 redirect: Callable[[Destination], Dispatcher | None], stats: ListenerStats) -> None:
        self.config = config
        self.chains = chains
        self.default = default
        self.redirect = redirect
        self.stats = stats
        self._matches = [chain.config.match for chain in chains]
        self._accepting: asyncio.Task[None] | None = None
        self._dispatching: set[asyncio.Task[None]] = set()
        self.sockets: list[socket.socket] = []

    # the bound socket

    def bind(self, reuse_port: bool) -> None:
        address = self.config.address
        family = socket.AF_INET6 if ":" in address.address else socket.AF_INET
        listening = socket.create_server((address.address, address.port), family=family, backlog=1024,
                                         reuse_port=reuse_port)
        listening.setblocking(False)
        self.sockets = [listening]
        self._accepting = asyncio.get_running_loop().create_task(self._accept(listening))

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for listening in self.sockets:
            listening.close()

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listening)
            except OSError as error:
                log.warning("listener %s: accept failed: %s", self.config.name, error)
                await asyncio.sleep(0.05)
                continue
            connection.setblocking(False)
            task = loop.create_task(self.dispatch(connection))
            self._dispatching.add(task)
            task.add_done_callback(self._dispatching.discard)

    # one connection

    async def dispatch(self, connection: socket.socket, destination: Destination | None = None) -> None:
        self.stats.downstream_cx_total += 1
        try:
            if destination is None:
                local = connection.getsockname()
                destination = (local[0], local[1])
                if self.config.original_dst or self.config.use_original_dst:   # Envoy implies it
                    with contextlib.suppress(OSError):
                        destination = original_destination(connection)
                if self.config.use_original_dst and destination != (local[0], local[1]):
                    target = self.redirect(destination)
                    if target is not None and target is not self:
                        self.stats.downstream_cx_total -= 1
                        await target.dispatch(connection, destination)
                        return
            inspection = await self._inspect(connection) if self.config.tls_inspector else Inspection("")
            if inspection is None:
                connection.close()
                return
            peer = connection.getpeername()
            facts = ConnectionFacts(destination[0], destination[1], peer[0], peer[1],
                                    inspection.transport_protocol, inspection.server_name, inspection.alpn)
            index = select(self._matches, facts)
            chain = self.chains[index] if index is not None else self.default
            if chain is None:
                self.stats.no_filter_chain_match += 1
                connection.close()
                return
            context = chain.tls.server_context() if chain.tls is not None else None
            chosen = chain
            server_name = inspection.server_name
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: chosen.protocol(destination, server_name), connection, ssl=context,
                ssl_handshake_timeout=10.0 if context is not None else None)
        except (OSError, ssl.SSLError, SecretNotReady, TimeoutError) as error:
            log.debug("listener %s: connection dropped: %s", self.config.name, error)
            connection.close()

    async def _inspect(self, connection: socket.socket) -> Inspection | None:
        """The tls_inspector's reading (None: close the connection)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.filters_timeout
        while True:
            try:
                data = connection.recv(MAX_HELLO, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data is not None:
                if not data:   # closed before saying anything
                    return None
                found = inspect(data)
                if found is not None:
                    return found
                if len(data) >= MAX_HELLO:
                    self.stats.downstream_listener_filter_error += 1
                    return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.stats.downstream_pre_cx_timeout += 1
                return Inspection("") if self.config.continue_on_filters_timeout else None
            if data:
                await asyncio.sleep(min(_PARTIAL_WAIT, remaining))
                continue
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(connection.fileno(), _resolve, readable)
            try:
                await asyncio.wait_for(readable, remaining)
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(connection.fileno())
