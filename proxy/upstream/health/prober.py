"""The asyncio shell of active health checking: one probe loop per host.

Each loop waits the initial delay, then repeatedly probes its host (bounded by
the config's timeout), feeds the outcome to the host's HealthState, writes
`Host.health_check_failed`, and sleeps `next_interval`. When a host's health
flips, `HostSet.health_changed()` rebuilds the balancers and `on_change` runs.

Probes:
- HTTP: one HTTP/1.1 request (method, path, Host = `host` or the cluster name,
  `user-agent: Envoy/HC`, plus configured headers) on a connection kept open
  between checks when `reuse_connection` and the server allows it. Expected
  status: success; retriable status: a failure counted toward the threshold;
  any other status: immediate failure. A connect error or a closed connection is
  a network failure; no response within the timeout is a network timeout.
- TCP: connect; with no `receive` payloads that is the whole check. Otherwise
  write `send` and read until every `receive` payload has been seen, in order.

Several checkers on one cluster (Envoy 1.40) each keep their own per-host state; a host is
failed while any of them says so (`peers`), so it is healthy only while all pass.

Hosts added to the HostSet while running start failed and pending, as in Envoy
(the HostSet marks them because `active_health_checking` is on); removed hosts'
loops are cancelled. `initialized` is set once every host has had its first
result: Envoy does not use a cluster before that (cluster warming).

Under `--concurrency N` only the leader worker runs HealthCheckers; its `reporter`
(proxy/upstream/health/report.py) tells the followers each result that matters to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from proxy.upstream.health.config import HealthCheckConfig, HttpCheck, TcpCheck
from proxy.upstream.health.report import HealthReporter
from proxy.upstream.health.state import (
    FailureKind,
    HealthState,
    Transition,
    initial_delay,
    next_interval,
)
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.tcp_keepalive import TcpKeepalive

log = logging.getLogger("tulle.proxy.health")

_READ_SIZE = 65536


@dataclass(slots=True)
class HealthCheckStats:
    """Envoy's `health_check.*` stats of one cluster."""

    attempt: int = 0
    success: int = 0
    failure: int = 0
    network_failure: int = 0
    passive_failure: int = 0
    healthy: int = 0

    def as_dict(self, prefix: str = "health_check.") -> dict[str, int]:
        return {
            f"{prefix}attempt": self.attempt,
            f"{prefix}success": self.success,
            f"{prefix}failure": self.failure,
            f"{prefix}network_failure": self.network_failure,
            f"{prefix}passive_failure": self.passive_failure,
            f"{prefix}verify_cluster": 0,
            f"{prefix}healthy": self.healthy,
            f"{prefix}degraded": 0,
        }


@dataclass(frozen=True, slots=True)
class ProbeResult:
    passed: bool
    kind: FailureKind = FailureKind.ACTIVE
    retriable: bool = False


_PASSED = ProbeResult(True)


class _ProbeFailed(Exception):
    def __init__(self, kind: FailureKind) -> None:
        super().__init__(kind.value)
        self.kind = kind


class _HttpResponse:
    """httptools callbacks: just enough to know when the head and the body ended."""

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.head_complete = False
        self.keep_alive = False
        self.complete = False

    def on_headers_complete(self) -> None:
        self.head_complete = True
        # Asked now: llhttp forgets it once the message is complete.
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    """A probe connection kept between checks (reuse_connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class HealthChecker:
    def __init__(
        self,
        config: HealthCheckConfig,
        host_set: HostSet,
        rng: random.Random,
        cluster_name: str,
        has_traffic: Callable[[], bool] = lambda: True,
        on_change: Callable[[], None] | None = None,
        on_check_passed: Callable[[Host], None] | None = None,
        reporter: HealthReporter | None = None,
        keepalive: TcpKeepalive | None = None,
        peers: list[HealthChecker] | None = None,
    ) -> None:
        self.config = config
        self.reporter = reporter
        self.keepalive = keepalive   # the cluster's tcp_keepalive: its probes' sockets get it too
        self.peers = peers if peers is not None else [self]   # the cluster's checkers, this one too
        self.stats = HealthCheckStats()
        self.on_change = on_change
        self.on_check_passed = on_check_passed
        self.initialized = asyncio.Event()
        self._host_set = host_set
        self._rng = rng
        self._cluster_name = cluster_name
        self._has_traffic = has_traffic
        self._states: dict[Host, HealthState] = {}
        self._tasks: dict[Host, asyncio.Task[None]] = {}
        self._connections: dict[Host, _Connection] = {}
        self._known_hosts: tuple[Host, ...] = ()
        self._running = False
        self._request = self._build_request() if isinstance(config.check, HttpCheck) else b""
        host_set.active_health_checking = True
        host_set.subscribe(self._sync_hosts)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Mark every host failed and pending, and start probing (needs a running loop)."""
        self._running = True
        for host in self._host_set.hosts:
            host.health_check_failed = True
        self._known_hosts = ()
        self._host_set.health_changed()  # runs _sync_hosts, which starts the loops
        if not self._host_set.hosts:
            self.initialized.set()

    async def stop(self) -> None:
        self._running = False
        if self.reporter is not None:
            self.reporter.stopped()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _sync_hosts(self) -> None:
        if not self._running:
            return
        hosts = self._host_set.hosts
        if hosts is self._known_hosts:
            return
        self._known_hosts = hosts
        current = set(hosts)
        for gone in [h for h in self._tasks if h not in current]:
            self._tasks.pop(gone).cancel()
            self._states.pop(gone, None)
            connection = self._connections.pop(gone, None)
            if connection is not None:
                connection.close()
        for host in hosts:
            if host not in self._tasks:
                self._states[host] = HealthState(
                    self.config.healthy_threshold, self.config.unhealthy_threshold, failed=host.health_check_failed
                )
                self._tasks[host] = asyncio.get_running_loop().create_task(
                    self._run(host), name=f"health-check {host.key}"
                )
        if self.reporter is not None:
            self.reporter.hosts_changed()
        self._update_initialized()

    def _update_initialized(self) -> None:
        if not self.initialized.is_set() and all(not s.pending for s in self._states.values()):
            self.initialized.set()
            if self.reporter is not None:
                self.reporter.complete()

    # -- the loop -----------------------------------------------------------------

    async def _run(self, host: Host) -> None:
        config = self.config
        await asyncio.sleep(initial_delay(config, self._rng))
        while True:
            self.stats.attempt += 1
            try:
                result = await asyncio.wait_for(self._probe(host), config.timeout)
            except TimeoutError:
                self._drop_connection(host)
                result = ProbeResult(False, FailureKind.NETWORK_TIMEOUT)
            except Exception:
                # A probe must never end the loop: the host would silently stop being checked.
                log.exception("health check of %s failed unexpectedly", host.key)
                self._drop_connection(host)
                result = ProbeResult(False, FailureKind.NETWORK)
            transition = self._apply(host, result)
            await asyncio.sleep(
                next_interval(config, result.passed, transition, self._has_traffic(), self._rng)
            )

    def _apply(self, host: Host, result: ProbeResult) -> Transition:
        state = self._states[host]
        first = state.pending
        if result.passed:
            self.stats.success += 1
            if state.failed:
                # Where slow start counts from (Envoy: last_hc_pass_time).
                host.last_hc_pass_time = asyncio.get_running_loop().time()
            transition = state.on_success()
        else:
            self.stats.failure += 1
            if result.kind in (FailureKind.NETWORK, FailureKind.NETWORK_TIMEOUT):
                self.stats.network_failure += 1
            elif result.kind is FailureKind.PASSIVE:
                self.stats.passive_failure += 1
            transition = state.on_failure(result.kind, result.retriable)
        self.stats.healthy = sum(1 for s in self._states.values() if not s.failed)
        failed = state.failed or any(peer.failed(host) for peer in self.peers if peer is not self)
        flipped = host.health_check_failed != failed
        if flipped:
            host.health_check_failed = failed
            self._host_set.health_changed()
            if self.on_change is not None:
                self.on_change()
        if result.passed and self.on_check_passed is not None:
            self.on_check_passed(host)
        if self.reporter is not None:
            self.reporter.checked(host, flipped or first)
        self._update_initialized()
        return transition

    def failed(self, host: Host) -> bool:
        """This checker's verdict on `host` (failed until its first check passes)."""
        state = self._states.get(host)
        return state is None or state.failed

    def immediate_failure(self, host: Host) -> None:
        """The router saw `x-envoy-immediate-health-check-fail` on a response from
        `host`: fail it now, without waiting for its next check (Envoy)."""
        if host in self._states:
            self._apply(host, ProbeResult(False, FailureKind.PASSIVE))

    # -- probes -------------------------------------------------------------------

    async def _probe(self, host: Host) -> ProbeResult:
        try:
            if isinstance(self.config.check, HttpCheck):
                return await self._probe_http(host, self.config.check)
            return await self._probe_tcp(host, self.config.check)
        except _ProbeFailed as failed:
            self._drop_connection(host)
            return ProbeResult(False, failed.kind)
        except OSError:
            self._drop_connection(host)
            return ProbeResult(False, FailureKind.NETWORK)

    def _drop_connection(self, host: Host) -> None:
        connection = self._connections.pop(host, None)
        if connection is not None:
            connection.close()

    async def _connect(self, host: Host) -> _Connection:
        connection = self._connections.get(host)
        if connection is not None and not connection.reader.at_eof():
            return connection
        self._drop_connection(host)
        reader, writer = await asyncio.open_connection(host.address, _probe_port(host))
        if self.keepalive is not None:
            self.keepalive.apply(writer.get_extra_info("socket"))
        connection = _Connection(reader, writer)
        if self.config.reuse_connection:
            self._connections[host] = connection
        return connection

    def _build_request(self) -> bytes:
        check = self.config.check
        assert isinstance(check, HttpCheck)
        headers = {"host": check.host or self._cluster_name, "user-agent": "Envoy/HC"}
        for name in check.headers_to_remove:
            headers.pop(name, None)
        lines = [f"{check.method} {check.path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += [f"{name}: {value}" for name, value in check.headers_to_add]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _probe_http(self, host: Host, check: HttpCheck) -> ProbeResult:
        connection = await self._connect(host)
        connection.writer.write(self._request)
        await connection.writer.drain()
        response = _HttpResponse()
        parser = httptools.HttpResponseParser(response)
        response.parser = parser
        head_only = check.method == "HEAD"  # no body follows the head of a HEAD response
        keep = self.config.reuse_connection
        while not (response.complete or (head_only and response.head_complete)):
            data = await connection.reader.read(_READ_SIZE)
            if not data:
                if not response.head_complete:
                    raise _ProbeFailed(FailureKind.NETWORK)
                keep = False  # a body delimited by the close of the connection
                break
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                raise _ProbeFailed(FailureKind.NETWORK) from None
        if not (keep and response.keep_alive):
            self._drop_connection(host)
            connection.close()
        status = parser.get_status_code()
        if check.is_expected(status):
            return _PASSED
        return ProbeResult(False, FailureKind.ACTIVE, retriable=check.is_retriable(status))

    async def _probe_tcp(self, host: Host, check: TcpCheck) -> ProbeResult:
        if check.connect_only:
            _, writer = await asyncio.open_connection(host.address, _probe_port(host))
            writer.close()
            return _PASSED
        connection = await self._connect(host)
        if check.send:
            connection.writer.write(check.send)
            await connection.writer.drain()
        received = b""
        while not _contains_in_order(received, check.receive):
            data = await connection.reader.read(_READ_SIZE)
            if not data:
                raise _ProbeFailed(FailureKind.NETWORK)
            received += data
        if not self.config.reuse_connection:
            self._drop_connection(host)
            connection.close()
        return _PASSED


def _probe_port(host: Host) -> int:
    return host.port if host.health_check_port is None else host.health_check_port


def _contains_in_order(buffer: bytes, parts: tuple[bytes, ...]) -> bool:
    """Envoy's TCP matcher: every part appears in `buffer`, each after the previous one."""
    start = 0
    for part in parts:
        found = buffer.find(part, start)
        if found < 0:
            return False
        start = found + len(part)
    return True
