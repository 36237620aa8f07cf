"""A cluster at run time: its hosts, balancer, circuit breaker, pools and stats, composed.

Theory of operation: the router asks `choose(hash_key, avoid)` for a host, then takes a
connection from that host's pool. Membership comes from the config (STATIC), from DNS
(STRICT_DNS: every address the name resolves to is a host; re-resolved every
dns_refresh_rate) or from EDS (`update_endpoints`). The HostSet keeps Host objects whose
address persists, so counters and health survive updates.

`avoid` implements the previous_hosts retry predicate: up to
host_selection_retry_max_attempts re-picks avoid hosts already tried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Sequence

from proxy.config_error import ConfigError, reject_unsupported
from proxy.stats import ClusterStats
from proxy.upstream.balancer import Balancer, make_balancer
from proxy.upstream.cluster_config import ClusterConfig, EndpointConfig
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.pool import ConnectionPool

log = logging.getLogger("tulle.proxy.cluster")

_FAMILIES = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6, "AUTO": socket.AF_UNSPEC,
             "V4_PREFERRED": socket.AF_UNSPEC, "ALL": socket.AF_UNSPEC}


class CircuitBreaker:
    """Envoy's default-priority thresholds: requests, pending requests, retries, connections."""

    __slots__ = ("max_connections", "max_pending_requests", "max_requests", "max_retries",
                 "rq_open", "rq_retry_open")

    def __init__(self, config: ClusterConfig, path: str) -> None:
        self.max_connections = self.max_pending_requests = self.max_requests = 1024
        self.max_retries = 3
        self.rq_open = 0
        self.rq_retry_open = 0
        proto = config.proto
        if proto is None or not proto.HasField("circuit_breakers"):
            return
        breakers = proto.circuit_breakers
        here = f"{path}.circuit_breakers"
        reject_unsupported(breakers, here, ("thresholds",))
        for index, threshold in enumerate(breakers.thresholds):
            at = f"{here}.thresholds[{index}]"
            reject_unsupported(threshold, at, ("priority", "max_connections", "max_pending_requests",
                                               "max_requests", "max_retries"))
            if threshold.priority != 0:
                raise ConfigError(f"{at}.priority", "only DEFAULT priority is supported")
            for name in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
                if threshold.HasField(name):
                    setattr(self, name, getattr(threshold, name).value)

    def try_start_request(self) -> bool:
        if self.rq_open >= self.max_requests:
            return False
        self.rq_open += 1
        return True

    def finish_request(self) -> None:
        self.rq_open -= 1

    def try_start_retry(self) -> bool:
        if self.rq_retry_open >= self.max_retries:
            return False
        self.rq_retry_open += 1
        return True

    def finish_retry(self) -> None:
        self.rq_retry_open -= 1


class Cluster:
    def __init__(self, config: ClusterConfig, path: str, rng: random.Random) -> None:
        self.name = config.name
        self.config = config
        self.stats = ClusterStats()
        self.rng = rng
        self.host_set = HostSet((), config.panic_threshold)
        self.hostnames: dict[Host, str] = {}
        proto = config.proto
        lb_config: object | None = None
        if proto is not None:
            field = {"LEAST_REQUEST": "least_request_lb_config", "ROUND_ROBIN": "round_robin_lb_config",
                     "RING_HASH": "ring_hash_lb_config", "MAGLEV": "maglev_lb_config"}.get(config.lb_policy)
            if field and proto.HasField(field):
                lb_config = getattr(proto, field)
            for other in ("least_request_lb_config", "round_robin_lb_config", "ring_hash_lb_config",
                          "maglev_lb_config"):
                if other != field and proto.HasField(other):
                    raise ConfigError(f"{path}.{other}", f"does not apply to lb_policy {config.lb_policy}")
            for unsupported in ("outlier_detection", "health_checks"):
                if proto.HasField(unsupported) if unsupported != "health_checks" else len(proto.health_checks):
                    raise ConfigError(f"{path}.{unsupported}", "not supported by tulle-proxy yet")
        try:
            self.balancer: Balancer = make_balancer(config.lb_policy, self.host_set, lb_config, rng)
        except ConfigError as error:
            raise error.under(path) from None
        self.breaker = CircuitBreaker(config, path)
        self.pools: dict[Host, ConnectionPool] = {}
        self._dns_task: asyncio.Task[None] | None = None
        if config.type == "STATIC":
            self.set_endpoints(config.endpoints)

    # membership

    def set_endpoints(self, endpoints: Sequence[EndpointConfig],
                      resolved: dict[str, list[str]] | None = None) -> None:
        hosts: list[Host] = []
        names: dict[tuple[str, int], str] = {}
        for endpoint in endpoints:
            addresses = resolved[endpoint.address] if resolved is not None else [endpoint.address]
            for address in addresses:
                host = Host(address, endpoint.port, weight=endpoint.weight,
                            locality_priority=endpoint.priority)
                hosts.append(host)
                names[(address, endpoint.port)] = endpoint.hostname
        self.host_set.update(hosts)
        self.hostnames = {host: names.get((host.address, host.port), host.address)
                          for host in self.host_set.hosts}
        for host in list(self.pools):
            if host not in self.hostnames:
                self.pools.pop(host).close()
        self.stats.membership_total = len(self.host_set.hosts)
        self.stats.membership_healthy = len(self.host_set.healthy)

    async def start(self) -> None:
        """Resolve a STRICT_DNS cluster once before serving, then keep re-resolving."""
        if self.config.type == "STRICT_DNS":
            await self._resolve()
            self._dns_task = asyncio.get_running_loop().create_task(self._refresh_dns())

    async def _resolve(self) -> None:
        loop = asyncio.get_running_loop()
        family = _FAMILIES.get(self.config.dns_family, socket.AF_UNSPEC)
        resolved: dict[str, list[str]] = {}
        for endpoint in self.config.endpoints:
            try:
                infos = await loop.getaddrinfo(endpoint.address, endpoint.port, family=family,
                                               type=socket.SOCK_STREAM)
            except OSError as error:
                log.warning("cluster %s: cannot resolve %s: %s", self.name, endpoint.address, error)
                resolved[endpoint.address] = []
                continue
            addresses: list[str] = []
            for info in infos:
                address = str(info[4][0])
                if address not in addresses:
                    addresses.append(address)
            if self.config.dns_family == "V4_PREFERRED" and any(":" not in a for a in addresses):
                addresses = [a for a in addresses if ":" not in a]
            resolved[endpoint.address] = addresses
        self.set_endpoints(self.config.endpoints, resolved)

    async def _refresh_dns(self) -> None:
        while True:
            await asyncio.sleep(self.config.dns_refresh_rate)
            await self._resolve()

    def stop(self) -> None:
        if self._dns_task is not None:
            self._dns_task.cancel()
        for pool in self.pools.values():
            pool.close()

    # per request

    def choose(self, hash_key: int | None, avoid: Sequence[Host] = (), attempts: int = 1) -> Host | None:
        host = self.balancer.choose(hash_key)
        if avoid and host is not None:
            for _ in range(attempts):
                if host not in avoid:
                    break
                host = self.balancer.choose(hash_key)
        return host

    def pool(self, host: Host) -> ConnectionPool:
        pool = self.pools.get(host)
        if pool is None:
            pool = self.pools[host] = ConnectionPool(host, self.stats, self.config.connect_timeout)
        return pool
