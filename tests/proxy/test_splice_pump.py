"""SplicePump alone, between socket pairs on uvloop: what it moves, how it reports the end of
stream and a broken destination, and that stopping it leaves the sockets to their owners."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

import uvloop

from proxy.splice_pump import NOTSENT_LOWAT, SplicePump


def run(test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(test(), 30))


class Pumped:
    """sender -> [source | pump | destination] -> receiver, with what the pump reported."""

    def __init__(self) -> None:
        self.sender, self.source = socket.socketpair()
        self.destination, self.receiver = socket.socketpair()
        for sock in (self.sender, self.source, self.destination, self.receiver):
            sock.setblocking(False)
        self.moved = 0
        self.ended = 0
        self.errors: list[OSError] = []
        self.pump = SplicePump(asyncio.get_running_loop(), self.source.fileno(), self.destination.fileno(),
                               self._moved, self._ended, self.errors.append)

    def _moved(self, size: int) -> None:
        self.moved += size

    def _ended(self) -> None:
        self.ended += 1

    def close(self) -> None:
        self.pump.stop()
        for sock in (self.sender, self.source, self.destination, self.receiver):
            sock.close()


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def test_bytes_arrive_in_order_through_a_full_destination_and_each_is_counted_once() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pumped = Pumped()
        payload = os.urandom(16 << 20)   # far more than the two sockets and the pipe hold
        try:
            sending = loop.create_task(loop.sock_sendall(pumped.sender, payload))
            await asyncio.sleep(0.05)   # the destination fills up while nobody reads it
            received = bytearray()
            while len(received) < len(payload):
                received.extend(await loop.sock_recv(pumped.receiver, 1 << 20))
            await sending
            assert received == payload
            assert pumped.moved == len(payload)
        finally:
            pumped.close()
    run(scenario)


def test_the_end_of_stream_is_reported_once_after_the_last_byte() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pumped = Pumped()
        try:
            await loop.sock_sendall(pumped.sender, b"last words")
            pumped.sender.shutdown(socket.SHUT_WR)
            await until(lambda: pumped.ended == 1)
            assert await loop.sock_recv(pumped.receiver, 100) == b"last words"
            assert pumped.moved == 10
            assert pumped.errors == []
        finally:
            pumped.close()
    run(scenario)


def test_a_destination_whose_peer_is_gone_is_reported_as_failed() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pumped = Pumped()
        try:
            pumped.receiver.close()
            await loop.sock_sendall(pumped.sender, b"into the void")
            await until(lambda: bool(pumped.errors))
            assert isinstance(pumped.errors[0], BrokenPipeError | ConnectionResetError)
        finally:
            pumped.close()
    run(scenario)


def test_after_stop_the_sockets_are_still_open_for_their_owners() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pumped = Pumped()
        try:
            pumped.pump.stop()
            pumped.pump.stop()   # twice is harmless
            await loop.sock_sendall(pumped.sender, b"not pumped")
            assert await loop.sock_recv(pumped.source, 100) == b"not pumped"
        finally:
            pumped.close()
    run(scenario)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


def test_a_tcp_destination_holds_at_most_notsent_lowat_unsent_bytes() -> None:
    """So TCP sends what the pump writes from the pump's own core, not later from whoever
    processes the acknowledgements."""
    async def scenario() -> None:
        sender, source = socket.socketpair()
        destination, receiver = tcp_pair()
        pump = SplicePump(asyncio.get_running_loop(), source.fileno(), destination.fileno(),
                          lambda size: None, lambda: None, lambda error: None)
        try:
            assert destination.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT
        finally:
            pump.stop()
            for sock in (sender, source, destination, receiver):
                sock.close()
    run(scenario)
