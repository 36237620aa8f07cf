"""A UDP DNS server on a thread for the DNS tests: each query is parsed (dnslib), `answer`
fills its reply, and `send` sends it back. The tests' servers differ in `answer` (and one
that holds replies back, in `send`)."""

from __future__ import annotations

import socket
import threading

from dnslib import DNSRecord


class ThreadedDnsServer:
    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)   # (a UDP socket's close does not wake a blocked recvfrom)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = DNSRecord.parse(data)
            reply = query.reply()
            self.answer(query, reply, peer)
            self.send(reply, peer)

    def answer(self, query: DNSRecord, reply: DNSRecord, peer: tuple[str, int]) -> None:
        raise NotImplementedError

    def send(self, reply: DNSRecord, peer: tuple[str, int]) -> None:
        self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()
