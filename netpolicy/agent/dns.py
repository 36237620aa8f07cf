"""The node's cluster DNS: Service names to ClusterIPs, answered by the agent on its pods'
gateway address (UDP and TCP, port 53), from the Services on its ADS stream.

Rules (kube-dns's, reduced to what pods need from the mesh):
- Only names under `cluster.local.` are answered, authoritatively; nothing is forwarded
  to the outside world. `<svc>.<ns>.svc.cluster.local` has an A record (its ClusterIP,
  TTL 5 s); a known name asked for another type gets an empty answer (NODATA), so a
  resolver asking A and AAAA in parallel still succeeds; every other name is NXDOMAIN.
- Short names (`<svc>`, `<svc>.<ns>`) are the pod's resolver's business: each pod's
  resolv.conf carries the search path `<ns>.svc.cluster.local svc.cluster.local
  cluster.local` with `ndots:5` (the lab writes it: `cni.lab.pod_dns`), so `catalog` asked from namespace `shop`
  arrives here as `catalog.shop.svc.cluster.local.`, and `catalog.shop` as
  `catalog.shop.svc.cluster.local.` after one NXDOMAIN.
- A query that does not parse is dropped (UDP) or ends the connection (TCP); one that
  parses but is not a standard query gets NOTIMP, one with no question FORMERR.
- `answer` is pure (the lookup is passed in); `DnsServer` is the asyncio shell. The
  sockets bind with IP_FREEBIND: the gateway address appears on the node's bridge only
  with its first pod, and the responder must already be there for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final, cast

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

log = logging.getLogger("tulle.agent.dns")

ZONE: Final = "cluster.local."
TTL: Final = 5
IP_FREEBIND: Final = 15
MAX_TCP_MESSAGE: Final = 65535

Resolve = Callable[[str], "ipaddress.IPv4Address | None"]


def answer(query: bytes, resolve: Resolve) -> bytes | None:
    """The response to one DNS message, None when it does not parse."""
    try:
        request = DNSRecord.parse(query)
    except (DNSError, struct.error, IndexError, ValueError):
        return None
    reply = request.reply(ra=0, aa=1)
    if request.header.opcode != 0:
        reply.header.rcode = RCODE.NOTIMP
        return bytes(reply.pack())
    if len(request.questions) != 1:
        reply.header.rcode = RCODE.FORMERR
        return bytes(reply.pack())
    question = request.q
    name = str(question.qname).lower()
    address = resolve(name) if name.endswith("." + ZONE) else None
    if address is None:
        reply.header.rcode = RCODE.NXDOMAIN
    elif question.qtype in (QTYPE.A, QTYPE.ANY):
        reply.add_answer(RR(question.qname, QTYPE.A, ttl=TTL, rdata=A(str(address))))
    return bytes(reply.pack())


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolve: Resolve) -> None:
        self.resolve = resolve
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        response = answer(data, self.resolve)
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)


class DnsServer:
    def __init__(self, address: ipaddress.IPv4Address, port: int, resolve: Resolve) -> None:
        self.address = address
        self.port = port
        self.resolve = resolve
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.resolve),
                                                           sock=self._socket(socket.SOCK_DGRAM))
        tcp = self._socket(socket.SOCK_STREAM)
        tcp.listen(64)
        self._tcp = await asyncio.start_server(self._on_tcp, sock=tcp)
        log.info("cluster DNS on %s:%d (UDP, TCP)", self.address, self.port)

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    def _socket(self, kind: socket.SocketKind) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sock.bind((str(self.address), self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 7766: length-prefixed messages, several per connection."""
        try:
            while True:
                (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 30))
                response = answer(await reader.readexactly(length), self.resolve)
                if response is None:
                    break
                writer.write(struct.pack("!H", len(response)) + response)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
