"""The servers a conformance pod runs, and the probe that asks them: on each of its ports a
pod answers every TCP connection and UDP datagram with its name; a probe from another pod's
namespace gets through when a TCP connection is accepted, or a UDP datagram is answered,
within its timeout. Shared by every topology backend (direct namespaces, the lab)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable
from typing import Any

from netpolicy.model import Protocol as L4
from netpolicy.netns import socket_in

Server = asyncio.AbstractServer | asyncio.BaseTransport


class _UdpReply(asyncio.DatagramProtocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(self.reply, addr)


async def serve_ports(netns: str, reply: bytes, ports: Iterable[Any]) -> list[Server]:
    """Servers in `netns` on every TCP and UDP port of `ports` (SCTP has no sockets on
    this kernel: such ports exist in the model only)."""
    loop = asyncio.get_running_loop()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(reply)
            await writer.drain()
        writer.close()

    servers: list[Server] = []
    for port in ports:
        if port.protocol is L4.TCP:
            sock = socket_in(netns, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port.port))
            servers.append(await asyncio.start_server(answer, sock=sock, backlog=256))
        elif port.protocol is L4.UDP:
            sock = socket_in(netns, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", port.port))
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpReply(reply), sock=sock)
            servers.append(transport)
    return servers


async def close_servers(servers: list[Server]) -> None:
    for server in servers:
        server.close()
        if isinstance(server, asyncio.AbstractServer):
            await server.wait_closed()
    servers.clear()


async def probe_answers(src_netns: str, address: tuple[str, int], protocol: L4, timeout: float) -> bool:
    """Whether the server at `address` answers a probe from `src_netns` within `timeout`
    (TCP: the connection is accepted; UDP: a datagram comes back). Only TCP and UDP."""
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_STREAM if protocol is L4.TCP else socket.SOCK_DGRAM
    sock = socket_in(src_netns, kind)
    try:
        if protocol is L4.TCP:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
            return True
        sock.connect(address)
        await loop.sock_sendall(sock, b"who?\n")
        return bool(await asyncio.wait_for(loop.sock_recv(sock, 512), timeout))
    except (TimeoutError, OSError):
        return False
    finally:
        sock.close()
