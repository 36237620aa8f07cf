"""The health checker against real local servers (loopback, ephemeral ports)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

from proxy.upstream.health import HealthCheckConfig, HttpCheck, TcpCheck
from proxy.upstream.health.prober import HealthChecker
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet

HTTP = HealthCheckConfig(
    timeout=0.5, interval=0.05, unhealthy_threshold=2, healthy_threshold=1, check=HttpCheck(path="/healthz")
)


class HttpUpstream:
    """An HTTP/1.1 server answering every request with `status`; counts requests and connections."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.silent = False
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> HttpUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop the open connections: the host is gone."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if self.silent:
                    await asyncio.sleep(10)
                body = b"ok"
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (self.status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def checker(config: HealthCheckConfig, hosts: list[Host], **kwargs: object) -> tuple[HealthChecker, HostSet]:
    host_set = HostSet(hosts, panic_threshold_percent=0)
    return HealthChecker(config, host_set, random.Random(0), "backend", **kwargs), host_set  # type: ignore[arg-type]


def test_hosts_start_failed_and_pass_on_the_first_check() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        host = Host("127.0.0.1", upstream.port)
        hc, host_set = checker(HTTP, [host])
        hc.start()
        assert host.health_check_failed and host_set.routable() == ()
        await asyncio.wait_for(hc.initialized.wait(), 3)
        assert not host.health_check_failed and host_set.routable() == (host,)
        assert host.last_hc_pass_time is not None  # slow start counts from here
        await hc.stop()
        await upstream.stop()

    run(main)


def test_unexpected_status_fails_the_host_at_once() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        host = Host("127.0.0.1", upstream.port)
        hc, host_set = checker(replace(HTTP, unhealthy_threshold=100), [host])
        changes: list[int] = []
        hc.on_change = lambda: changes.append(1)
        hc.start()
        await until(lambda: not host.health_check_failed)
        upstream.status = 503
        await until(lambda: host.health_check_failed)
        assert host not in host_set.routable()
        assert hc.stats.as_dict()["health_check.failure"] >= 1
        assert changes == [1, 1]
        await hc.stop()
        await upstream.stop()

    run(main)


def test_recovery_needs_healthy_threshold_successes() -> None:
    async def main() -> None:
        upstream = await HttpUpstream(status=500).start()
        host = Host("127.0.0.1", upstream.port)
        hc, _ = checker(replace(HTTP, healthy_threshold=3), [host])
        hc.start()
        await asyncio.wait_for(hc.initialized.wait(), 3)
        assert host.health_check_failed
        upstream.status = 200
        before = len(upstream.requests)
        await until(lambda: not host.health_check_failed)
        assert len(upstream.requests) - before >= 3
        await hc.stop()
        await upstream.stop()

    run(main)


def test_connect_failures_count_up_to_the_unhealthy_threshold() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        host = Host("127.0.0.1", upstream.port)
        hc, _ = checker(replace(HTTP, unhealthy_threshold=3), [host])
        hc.start()
        await until(lambda: not host.health_check_failed)
        await upstream.stop()
        failures_before = hc.stats.network_failure
        await until(lambda: host.health_check_failed)
        assert hc.stats.network_failure - failures_before == 3
        await hc.stop()

    run(main)


def test_no_answer_within_timeout_is_a_network_failure() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        host = Host("127.0.0.1", upstream.port)
        hc, _ = checker(replace(HTTP, timeout=0.1, unhealthy_threshold=1), [host])
        hc.start()
        await until(lambda: not host.health_check_failed)
        upstream.silent = True
        await until(lambda: host.health_check_failed)
        assert hc.stats.network_failure >= 1
        await hc.stop()
        await upstream.stop()

    run(main)


def test_request_names_the_cluster_as_host_and_envoy_as_agent() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        hc, _ = checker(HTTP, [Host("127.0.0.1", upstream.port)])
        hc.start()
        await until(lambda: bool(upstream.requests))
        head = upstream.requests[0].decode().lower()
        assert head.startswith("get /healthz http/1.1\r\n")
        assert "host: backend\r\n" in head and "user-agent: envoy/hc\r\n" in head
        await hc.stop()
        await upstream.stop()

    run(main)


def test_configured_host_and_headers_are_sent() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        check = HttpCheck(path="/h", host="svc.local", headers_to_add=(("x-probe", "1"),))
        hc, _ = checker(replace(HTTP, check=check), [Host("127.0.0.1", upstream.port)])
        hc.start()
        await until(lambda: bool(upstream.requests))
        head = upstream.requests[0].decode().lower()
        assert "host: svc.local\r\n" in head and "x-probe: 1\r\n" in head
        await hc.stop()
        await upstream.stop()

    run(main)


def test_connection_is_reused_between_checks() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        hc, _ = checker(HTTP, [Host("127.0.0.1", upstream.port)])
        hc.start()
        await until(lambda: len(upstream.requests) >= 4)
        assert upstream.connections == 1
        await hc.stop()
        await upstream.stop()

    run(main)


def test_without_reuse_each_check_opens_a_connection() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        hc, _ = checker(replace(HTTP, reuse_connection=False), [Host("127.0.0.1", upstream.port)])
        hc.start()
        await until(lambda: len(upstream.requests) >= 3)
        assert upstream.connections >= 3
        await hc.stop()
        await upstream.stop()

    run(main)


def test_tcp_connect_only() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        up, down = Host("127.0.0.1", upstream.port), Host("127.0.0.1", closed_port())
        config = replace(HTTP, check=TcpCheck())
        hc, host_set = checker(config, [up, down])
        hc.start()
        await asyncio.wait_for(hc.initialized.wait(), 3)
        assert host_set.routable() == (up,)
        await hc.stop()
        await upstream.stop()

    run(main)


def test_tcp_send_and_receive_in_order() -> None:
    async def main() -> None:
        async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(100):
                writer.write(b"po")
                await writer.drain()
                writer.write(b"ng!")  # the reply arrives in pieces
            writer.close()

        server = await asyncio.start_server(pong, "127.0.0.1", 0)
        host = Host("127.0.0.1", server.sockets[0].getsockname()[1])
        good = replace(HTTP, check=TcpCheck(b"ping", (b"po", b"ng")))
        hc, _ = checker(good, [host])
        hc.start()
        await until(lambda: not host.health_check_failed)
        await hc.stop()

        other = Host("127.0.0.1", host.port)
        bad = replace(HTTP, timeout=0.1, check=TcpCheck(b"ping", (b"ng", b"po")))
        hc, _ = checker(bad, [other])
        hc.start()
        await asyncio.wait_for(hc.initialized.wait(), 3)
        assert other.health_check_failed
        await hc.stop()
        server.close()
        await server.wait_closed()

    run(main)


def test_host_added_later_starts_failed_until_checked() -> None:
    async def main() -> None:
        first, second = await HttpUpstream().start(), await HttpUpstream().start()
        a = Host("127.0.0.1", first.port)
        hc, host_set = checker(HTTP, [a])
        hc.start()
        await until(lambda: not a.health_check_failed)
        b = Host("127.0.0.1", second.port)
        host_set.update([a, b])
        assert b.health_check_failed and not a.health_check_failed
        await until(lambda: not b.health_check_failed)
        await hc.stop()
        await first.stop()
        await second.stop()

    run(main)


def test_removed_host_is_no_longer_probed() -> None:
    async def main() -> None:
        first, second = await HttpUpstream().start(), await HttpUpstream().start()
        a, b = Host("127.0.0.1", first.port), Host("127.0.0.1", second.port)
        hc, host_set = checker(HTTP, [a, b])
        hc.start()
        await until(lambda: len(second.requests) >= 2)
        host_set.update([a])
        await asyncio.sleep(0.05)
        seen = len(second.requests)
        await asyncio.sleep(0.3)
        assert len(second.requests) == seen
        await hc.stop()
        await first.stop()
        await second.stop()

    run(main)


def test_passing_check_is_reported_for_outlier_unejection() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        host = Host("127.0.0.1", upstream.port)
        passed: list[Host] = []
        hc, _ = checker(HTTP, [host], on_check_passed=passed.append)
        hc.start()
        await until(lambda: len(passed) >= 2)
        assert passed[0] is host
        await hc.stop()
        await upstream.stop()

    run(main)


def test_immediate_failure_from_the_router_fails_the_host_now() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        host = Host("127.0.0.1", upstream.port)
        hc, host_set = checker(replace(HTTP, interval=10.0, unhealthy_threshold=5), [host])
        hc.start()
        await until(lambda: not host.health_check_failed)
        hc.immediate_failure(host)
        assert host.health_check_failed and host_set.routable() == ()
        assert hc.stats.as_dict()["health_check.passive_failure"] == 1
        await hc.stop()
        await upstream.stop()

    run(main)


def test_health_check_port_overrides_the_traffic_port() -> None:
    async def main() -> None:
        upstream = await HttpUpstream().start()
        host = Host("127.0.0.1", closed_port(), health_check_port=upstream.port)
        hc, _ = checker(HTTP, [host])
        hc.start()
        await until(lambda: not host.health_check_failed)
        assert upstream.requests
        await hc.stop()
        await upstream.stop()

    run(main)


async def raw_server(reply: bytes, close: bool) -> tuple[asyncio.Server, list[int]]:
    """A server answering every request head with the fixed bytes `reply`."""
    connections = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), connections


def test_chunked_response_passes_and_keeps_the_connection() -> None:
    async def main() -> None:
        reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        server, connections = await raw_server(reply, close=False)
        host = Host("127.0.0.1", server.sockets[0].getsockname()[1])
        hc, _ = checker(HTTP, [host])
        hc.start()
        await until(lambda: hc.stats.success >= 3)
        assert connections[0] == 1 and not host.health_check_failed
        await hc.stop()
        server.close()

    run(main)


def test_body_ended_by_close_passes() -> None:
    async def main() -> None:
        reply = b"HTTP/1.0 200 OK\r\n\r\nok"
        server, connections = await raw_server(reply, close=True)
        host = Host("127.0.0.1", server.sockets[0].getsockname()[1])
        hc, _ = checker(HTTP, [host])
        hc.start()
        await until(lambda: hc.stats.success >= 2)
        assert connections[0] >= 2 and not host.health_check_failed
        await hc.stop()
        server.close()

    run(main)


def test_garbage_answer_is_a_network_failure() -> None:
    async def main() -> None:
        server, _ = await raw_server(b"SSH-2.0-OpenSSH\r\n\r\n", close=False)
        host = Host("127.0.0.1", server.sockets[0].getsockname()[1])
        hc, _ = checker(HTTP, [host])
        hc.start()
        await until(lambda: hc.stats.network_failure >= 1)
        assert host.health_check_failed
        await hc.stop()
        server.close()

    run(main)


def test_with_several_checkers_a_host_is_healthy_only_while_all_pass() -> None:
    async def scenario() -> None:
        upstream = await HttpUpstream(status=503).start()
        try:
            host = Host("127.0.0.1", upstream.port)
            hosts = HostSet((host,))
            checkers: list[HealthChecker] = []
            tcp = replace(HTTP, check=TcpCheck(), name="tcp")
            for config in (replace(HTTP, name="http"), tcp):
                checkers.append(HealthChecker(config, hosts, random.Random(1), "c", peers=checkers))
            for checker in checkers:
                checker.start()
            for checker in checkers:
                await asyncio.wait_for(checker.initialized.wait(), 2)
            await asyncio.sleep(0.2)
            assert not checkers[1].failed(host)       # the TCP check passes ...
            assert checkers[0].failed(host)           # ... the HTTP check does not
            assert host.health_check_failed
            upstream.status = 200
            await asyncio.sleep(0.3)
            assert not host.health_check_failed       # both pass now
            for checker in checkers:
                await checker.stop()
        finally:
            await upstream.stop()
    asyncio.run(scenario())
