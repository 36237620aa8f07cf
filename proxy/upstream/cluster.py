"""A cluster at run time: its hosts, balancer, circuit breaker, pools and stats, composed.

Theory of operation: the router asks `choose(hash_key, avoid)` for a host, then takes a
connection from that host's pool. Membership comes from the config (STATIC), from DNS
(STRICT_DNS: every address an endpoint's name resolves to is a host; LOGICAL_DNS: the first
address the one name resolves to is the one host, new connections go to the latest one; each
name is re-resolved on its own timer, at the time proxy/upstream/dns_refresh.py gives, by the
c-ares resolver of proxy/upstream/dns_resolver.py; a failed resolution keeps the name's
addresses, and so does an empty answer for LOGICAL_DNS; each resolution is counted in
Envoy's update_* stats, proxy/upstream/dns_updates.py) or from EDS (`update_endpoints`). The
HostSet keeps Host objects whose address persists, so counters and health survive updates.

`avoid` implements the previous_hosts retry predicate: up to
host_selection_retry_max_attempts re-picks avoid hosts already tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence

from proxy.stats import ClusterStats
from proxy.tls.secrets import SecretStore
from proxy.tls.transport_socket import TlsStats, TlsTransport
from proxy.upstream.balancer import Balancer, make_balancer
from proxy.upstream.balancer.maglev import MaglevBalancer
from proxy.upstream.balancer.ring_hash import RingHashBalancer
from proxy.upstream.circuit_breaker import CircuitBreaker
from proxy.upstream.cluster_config import ClusterConfig, EndpointConfig
from proxy.upstream.dns_refresh import DnsRefreshSchedule
from proxy.upstream.dns_resolver import DnsAnswer, DnsFailure, DnsResolver, resolver_for
from proxy.upstream.dns_updates import DnsUpdates
from proxy.upstream.dns_workers import LOCAL_DNS, DnsResolutions, Resolved
from proxy.upstream.health.workers import LOCAL, HealthCheckers
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.outlier import OutlierDetector
from proxy.upstream.outlier_workers import LOCAL_OUTLIER, OutlierDetectors
from proxy.upstream.pool import ConnectionPool

log = logging.getLogger("tulle.proxy.cluster")

MAX_ORIGINAL_HOSTS = 1024  # ORIGINAL_DST hosts kept with their pools (Envoy cleans up unused ones)


_HIGH_PRIORITY_OPEN = {f"circuit_breakers.high.{gauge}": 0
                       for gauge in ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")}


class Cluster:
    def __init__(self, config: ClusterConfig, rng: random.Random,
                 secrets: SecretStore | None = None, health: HealthCheckers = LOCAL,
                 outliers: OutlierDetectors = LOCAL_OUTLIER, dns: DnsResolutions = LOCAL_DNS,
                 breaker: CircuitBreaker | None = None) -> None:
        """`health`: who probes this worker's hosts (proxy/upstream/health/workers.py);
        `outliers`: who decides their ejections (proxy/upstream/outlier_workers.py); `dns`:
        who resolves a DNS cluster (proxy/upstream/dns_workers.py); `breaker`: the cluster's
        circuit breaker, if not this worker's own (proxy/upstream/shared_breaker.py)."""
        self.name = config.name
        self.config = config
        self.max_stream_duration = config.max_stream_duration   # (read per attempt)
        self.stats = ClusterStats()
        self.rng = rng
        self.host_set = HostSet((), config.panic_threshold)
        self.hostnames: dict[Host, str] = {}
        self.balancer: Balancer = make_balancer(config.lb_policy, self.host_set, config.lb_config, rng,
                                                config_path=config.lb_config_path)
        if config.locality_weighted:
            self.host_set.set_locality_weighted(True)
        self.breaker = breaker if breaker is not None else CircuitBreaker(config.thresholds)
        self._outliers = outliers
        self.outlier: OutlierDetector | None = (
            outliers.detector(config.outlier, self.host_set, rng, config.name, self._health_changed)
            if config.outlier is not None else None)
        self._outlier_timer: asyncio.TimerHandle | None = None
        # --concurrency: whether another worker sent this cluster requests (the leader's
        # checker probes at `interval`, not `no_traffic_interval`, once any worker did)
        self.traffic_elsewhere: Callable[[], bool] = lambda: False
        # several checks: a host is healthy only while all of them pass (Envoy 1.40)
        self.health_checkers = health.checkers(
            config.health_checks, self.host_set, rng, config.name,
            has_traffic=lambda: self.stats.upstream_rq_total > 0 or self.traffic_elsewhere(),
            on_change=self._health_changed,
            on_check_passed=self._health_check_passed if self.outlier else None,
            keepalive=config.tcp_keepalive)
        self.pools: dict[Host, ConnectionPool] = {}
        self._original_hosts: dict[tuple[str, int], Host] = {}  # ORIGINAL_DST, by address
        self.original_dst = config.type == "ORIGINAL_DST"
        self.tls_stats = TlsStats()
        store = secrets if secrets is not None else SecretStore()
        self._default_tls = (TlsTransport(config.transport_socket, store, self.tls_stats)
                             if config.transport_socket is not None else None)
        self._matched_tls = [(match, TlsTransport(match.tls, store, self.tls_stats) if match.tls else None)
                             for match in config.socket_matches]
        self._socket_match: dict[Host, tuple[tuple[str, str], ...]] = {}
        self.config_endpoints: tuple[EndpointConfig, ...] = config.endpoints
        self._dns = dns
        self.dns_resolver: DnsResolver | None = None   # (made on first use from config.dns_resolver)
        self._dns_schedule = DnsRefreshSchedule(config.dns_refresh, rng)
        self._resolved: dict[str, list[str]] = {}   # each name's addresses, from its latest answer
        self.dns_updates = DnsUpdates(logical=config.type == "LOGICAL_DNS")
        self._endpoints_named: dict[str, int] = {}   # how many endpoints name each DNS name
        for endpoint in config.endpoints:
            self._endpoints_named[endpoint.address] = self._endpoints_named.get(endpoint.address, 0) + 1
        self._dns_tasks: list[asyncio.Task[None]] = []
        self._resolved_once = asyncio.Event()   # a follower's first resolution from the leader
        if config.type == "STATIC":
            self.set_endpoints(config.endpoints)

    # membership

    def set_endpoints(self, endpoints: Sequence[EndpointConfig],
                      resolved: Mapping[str, Sequence[str]] | None = None) -> None:
        hosts: list[Host] = []
        names: dict[tuple[str, int], str] = {}
        metadata: dict[tuple[str, int], tuple[tuple[str, str], ...]] = {}
        for endpoint in endpoints:
            addresses = resolved.get(endpoint.address, ()) if resolved is not None else (endpoint.address,)
            for address in addresses:
                host = Host(address, endpoint.port, weight=endpoint.weight,
                            locality_priority=endpoint.priority,
                            eds_health_failed=endpoint.health_failed,
                            health_check_port=endpoint.health_check_port,
                            locality=endpoint.locality, locality_weight=endpoint.locality_weight)
                hosts.append(host)
                names[(address, endpoint.port)] = endpoint.hostname
                if endpoint.socket_match:
                    metadata[(address, endpoint.port)] = endpoint.socket_match
        self.stats.membership_change += self.host_set.update(hosts)
        self.hostnames = {host: names.get((host.address, host.port), host.address)
                          for host in self.host_set.hosts}
        self._socket_match = {host: metadata[(host.address, host.port)] for host in self.host_set.hosts
                              if (host.address, host.port) in metadata}
        for host in list(self.pools):
            if host not in self.hostnames or self.pools[host].tls is not self.transport_socket(host):
                self.pools.pop(host).close()
                self.breaker.close_pool()
        self._health_changed()

    def _health_changed(self) -> None:
        self.stats.membership_total = len(self.host_set.hosts)
        self.stats.membership_healthy = len(self.host_set.healthy)

    def extra_stats(self) -> dict[str, int]:
        """The balancer's, breaker's and outlier detector's stats, under this cluster's scope."""
        stats = self.breaker.stats()
        # every request is of the DEFAULT routing priority (a route's `priority` is refused at
        # load), so the HIGH one's breaker is never open; Envoy shows its gauges all the same
        stats.update(_HIGH_PRIORITY_OPEN)
        stats["lb_healthy_panic"] = self.balancer.lb_healthy_panic
        rx, tx = self.stats.closed_bytes
        for pool in self.pools.values():
            for connection in pool.connections:
                rx += connection.rx_bytes
                tx += connection.tx_bytes
        stats["upstream_cx_rx_bytes_total"] = rx
        stats["upstream_cx_tx_bytes_total"] = tx
        if self.outlier is not None:
            stats.update(self.outlier.stats.as_dict())
        named = len(self.health_checkers) > 1   # Envoy: health_check.name.NAME.* then
        for checker in self.health_checkers:
            stats.update(checker.stats.as_dict(f"health_check.name.{checker.config.name}." if named
                                               else "health_check."))
        if self._default_tls is not None or self._matched_tls:
            stats.update(self.tls_stats.as_dict())
        if self.config.type != "EDS":   # (EDS counts its assignments: not shown yet)
            stats.update(self.dns_updates.as_dict())
        return stats

    async def start(self) -> None:
        """Resolve a STRICT_DNS or LOGICAL_DNS cluster's names once before serving, then keep
        re-resolving each on its own schedule (a follower worker: wait for the leader's first
        resolution, then take each); start the outlier detector's interval."""
        if self.outlier is not None:
            self._schedule_outlier_tick()
        if self.config.type in ("STRICT_DNS", "LOGICAL_DNS"):
            self._dns.start(self.name, self, self._take_resolution)
            if self._dns.resolves:
                names = list(dict.fromkeys(endpoint.address for endpoint in self.config.endpoints))
                dues = await asyncio.gather(*(self._resolve_name(name) for name in names))
                self._apply_resolution()
                loop = asyncio.get_running_loop()
                self._dns_tasks = [loop.create_task(self._refresh_dns(name, due))
                                   for name, (due, _) in zip(names, dues, strict=True)]
            else:
                await self._resolved_once.wait()
        for checker in self.health_checkers:
            checker.start()
        for checker in self.health_checkers:
            # Cluster warming: like Envoy, wait (bounded) for every host's first check.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(checker.initialized.wait(), checker.config.timeout + 1.0)

    async def _resolve_name(self, name: str) -> tuple[float, bool]:
        """Resolve one name: when to resolve it next (time.monotonic()), and whether its addresses
        changed. A failure, or for LOGICAL_DNS an empty answer, keeps the addresses it had
        (Envoy keeps a target's hosts until an answer replaces them)."""
        resolver = self.dns_resolver
        if resolver is None:
            resolver = self.dns_resolver = resolver_for(self.config.dns_resolver)
        logical = self.config.type == "LOGICAL_DNS"
        updates = self.dns_updates
        endpoints = self._endpoints_named.get(name, 1)
        updates.attempted(endpoints)
        try:
            answer: DnsAnswer | None = await resolver.resolve(name, self.config.dns_family)
        except DnsFailure as error:
            log.warning("cluster %s: cannot resolve %s: %s", self.name, name, error)
            answer = None
        now = time.monotonic()   # c-ares' clock: its cache expires entries on CLOCK_MONOTONIC
        if answer is None or (logical and not answer.addresses):
            updates.failed(endpoints)
            return self._dns_schedule.failed(now), False
        addresses = list(dict.fromkeys(answer.addresses))
        changed = updates.answered(name, addresses, endpoints)
        if logical:
            addresses = addresses[:1]   # (the other addresses only tell a rebuild, above)
        changed = changed and self._resolved.get(name) != addresses
        if changed:
            self._resolved[name] = addresses
        return self._dns_schedule.answered(now, answer.ttls), changed

    def _apply_resolution(self) -> None:
        """The resolved names' addresses become the hosts, here and (the leader) in every worker."""
        resolved = {name: list(addresses) for name, addresses in self._resolved.items()}
        self.set_endpoints(self.config.endpoints, resolved)
        self._dns.resolved(self.name, self, resolved)

    def _take_resolution(self, resolved: Resolved) -> None:
        """A resolution the leader made (--concurrency): this worker's hosts."""
        self.set_endpoints(self.config.endpoints, resolved)
        self._resolved_once.set()

    async def _refresh_dns(self, name: str, due: float) -> None:
        while True:
            # Never early, not even by the loop timer's millisecond rounding: asked again
            # before its TTL ran out, c-ares would answer from its cache with a TTL of 0 left.
            delay = due - time.monotonic()
            while delay > 0:
                await asyncio.sleep(delay)
                delay = due - time.monotonic()
            due, changed = await self._resolve_name(name)
            if changed:
                self._apply_resolution()

    def _schedule_outlier_tick(self) -> None:
        assert self.outlier is not None
        loop = asyncio.get_running_loop()
        self._outlier_timer = loop.call_later(self.outlier.config.interval, self._outlier_tick)

    def _outlier_tick(self) -> None:
        assert self.outlier is not None
        self.outlier.tick(asyncio.get_running_loop().time())
        self._schedule_outlier_tick()

    def _health_check_passed(self, host: Host) -> None:
        assert self.outlier is not None
        self.outlier.health_check_passed(host, asyncio.get_running_loop().time())

    def record_outcome(self, host: Host, status: int | None) -> None:
        """Feed passive health checking: a response status, or None (connect failure,
        reset, timeout); it is counted in the host's counters too."""
        if status is not None and status < 500:
            host.rq_success += 1
        else:
            host.rq_error += 1
        outlier = self.outlier
        if outlier is not None:
            outlier.record(host, status, asyncio.get_running_loop().time())

    async def stop(self) -> None:
        for checker in self.health_checkers:
            await checker.stop()
        if self._outlier_timer is not None:
            self._outlier_timer.cancel()
        if self.outlier is not None:
            self._outliers.stopped(self.name, self.outlier)
        for task in self._dns_tasks:
            task.cancel()
        if self.config.type in ("STRICT_DNS", "LOGICAL_DNS"):
            self._dns.stopped(self.name, self)
        for pool in self.pools.values():
            pool.close()
            self.breaker.close_pool()
        self.pools.clear()

    # per request

    def original_destination(self, address: tuple[str, int]) -> Host:
        """ORIGINAL_DST: the host a request's downstream connection was originally sent to
        (one Host per address, so its connection pool is reused). The oldest is dropped past
        MAX_ORIGINAL_HOSTS, its pool closing once its requests in flight are done."""
        host = self._original_hosts.get(address)
        if host is None:
            if len(self._original_hosts) >= MAX_ORIGINAL_HOSTS:
                old = self._original_hosts.pop(next(iter(self._original_hosts)))
                pool = self.pools.pop(old, None)
                if pool is not None:
                    pool.close()
                    self.breaker.close_pool()
            host = self._original_hosts[address] = Host(*address)
        return host

    def choose(self, hash_key: int | None, avoid: Sequence[Host] = (), attempts: int = 1) -> Host | None:
        """A host for a request; re-picked up to `attempts` times while it is in `avoid`
        (previous_hosts). A hash balancer would return the same host for the same key, so
        it is asked again with the attempt number, as Envoy's ring hash and Maglev do."""
        balancer = self.balancer
        host = balancer.choose(hash_key)
        if avoid and host is not None:
            rehash = hash_key is not None and isinstance(balancer, RingHashBalancer | MaglevBalancer)
            for attempt in range(1, attempts + 1):
                if host not in avoid:
                    break
                host = (balancer.choose(hash_key, attempt=attempt)  # type: ignore[call-arg]
                        if rehash else balancer.choose(hash_key))
        return host

    def transport_socket(self, host: Host) -> TlsTransport | None:
        """The host's TLS (None: plaintext): the first transport_socket_matches entry whose
        match is within the endpoint's `envoy.transport_socket_match` metadata, else the
        cluster's transport_socket."""
        if self._matched_tls:
            metadata = set(self._socket_match.get(host, ()))
            for match, tls in self._matched_tls:
                if set(match.match) <= metadata:
                    return tls
        return self._default_tls

    def pool(self, host: Host) -> ConnectionPool:
        pool = self.pools.get(host)
        if pool is None:
            self.breaker.open_pool()   # Envoy's remaining_cx_pools
            pool = self.pools[host] = ConnectionPool(host, self.stats, self.config.connect_timeout,
                                                     self.breaker,
                                                     self.config.max_requests_per_connection,
                                                     self.transport_socket(host), self.config.buffer_limit,
                                                     self.config.tcp_keepalive,
                                                     self.config.max_response_headers_bytes)
        return pool
