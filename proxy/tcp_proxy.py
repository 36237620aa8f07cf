"""The tcp_proxy network filter: one upstream connection per downstream connection, bytes
relayed both ways.

Rules (envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy):
- the cluster is `cluster`, or one of `weighted_clusters` drawn per connection by weight;
- the host comes from the cluster's balancer; a failed connect is retried on a new host up
  to `max_connect_attempts` (default 1), after which the downstream connection is closed;
- bytes read before the upstream connection is up are held (and reading paused), then sent;
- a half-close (FIN) on one side is passed to the other (to a TLS side, which asyncio
  cannot half-close, as a full close after its writes are flushed); the pair closes when
  both sides are done or either side resets; `idle_timeout` (default 1 h, 0 disables) closes a pair
  with no traffic either way;
- flow control: when one side's write buffer is full the other side stops reading.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join, seconds
from proxy.rbac import RbacConfig, RbacStats, Subject, allowed
from proxy.stats import TcpProxyStats
from proxy.tls.peer_certificate import peer_certificate
from proxy.tls.transport_socket import SecretNotReady
from proxy.upstream.host import Host

if TYPE_CHECKING:
    from proxy.upstream.cluster import Cluster


@dataclass(frozen=True, slots=True)
class TcpProxyConfig:
    stat_prefix: str
    cluster: str = ""
    weighted_clusters: tuple[tuple[str, int], ...] = ()
    idle_timeout: float = 3600.0
    max_connect_attempts: int = 1

    @classmethod
    def from_proto(cls, message: TcpProxy, path: str) -> TcpProxyConfig:
        reject_unsupported(message, path, ("stat_prefix", "cluster", "weighted_clusters",
                                           "idle_timeout", "max_connect_attempts"))
        if not message.stat_prefix:
            raise ConfigError(join(path, "stat_prefix"), "must not be empty")
        weighted: list[tuple[str, int]] = []
        if message.HasField("weighted_clusters"):
            here = join(path, "weighted_clusters")
            reject_unsupported(message.weighted_clusters, here, ("clusters",))
            for index, cluster in enumerate(message.weighted_clusters.clusters):
                reject_unsupported(cluster, f"{here}.clusters[{index}]", ("name", "weight"))
                weighted.append((cluster.name, cluster.weight))
            if sum(weight for _, weight in weighted) <= 0:
                raise ConfigError(here, "needs a cluster with weight > 0")
        elif not message.cluster:
            raise ConfigError(path, "one of cluster or weighted_clusters is required")
        attempts = message.max_connect_attempts.value if message.HasField("max_connect_attempts") else 1
        if attempts < 1:
            raise ConfigError(join(path, "max_connect_attempts"), "must be >= 1")
        return cls(
            stat_prefix=message.stat_prefix,
            cluster=message.cluster,
            weighted_clusters=tuple(weighted),
            idle_timeout=seconds(message.idle_timeout) if message.HasField("idle_timeout") else 3600.0,
            max_connect_attempts=attempts,
        )

    def clusters(self) -> set[str]:
        return {self.cluster} if self.cluster else {name for name, _ in self.weighted_clusters}

    def pick_cluster(self, rng: random.Random) -> str:
        if not self.weighted_clusters:
            return self.cluster
        point = rng.random() * sum(weight for _, weight in self.weighted_clusters)
        for name, weight in self.weighted_clusters:
            if point < weight:
                return name
            point -= weight
        return self.weighted_clusters[-1][0]


class TcpProxyFilter:
    """The per-listener part: config, clusters and stats; makes one protocol per connection."""

    def __init__(self, config: TcpProxyConfig, clusters: dict[str, Cluster], rng: random.Random,
                 rbac: tuple[RbacConfig, ...] = ()) -> None:
        self.config = config
        self.clusters = clusters
        self.rng = rng
        self.stats = TcpProxyStats()
        self.rbac = rbac
        self.rbac_stats = RbacStats()

    def protocol(self, destination: tuple[str, int] | None = None) -> asyncio.Protocol:
        """A connection's protocol; `destination` is its original destination (what an
        ORIGINAL_DST cluster connects to)."""
        return DownstreamTcp(self, destination)

    def extra_stats(self) -> dict[str, int]:
        if not self.rbac:
            return {}
        return {"rbac.allowed": self.rbac_stats.allowed, "rbac.denied": self.rbac_stats.denied}


class _Side(asyncio.Protocol):
    """One end of the relay; `peer` is the other end's transport once both exist."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False
        self.closed = False
        self.last_activity = 0.0

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def half_close(self) -> None:
        """Pass the other side's FIN on. asyncio's TLS transports cannot half-close: such a
        side is closed once its writes are flushed (close_notify), else neither peer would
        ever learn that the connection ended."""
        if self.transport is None or self.closed:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class UpstreamTcp(_Side):
    def __init__(self, downstream: DownstreamTcp) -> None:
        super().__init__()
        self.peer = downstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        downstream = self.peer
        assert isinstance(downstream, DownstreamTcp)
        downstream.owner.stats.downstream_cx_tx_bytes_total += len(data)
        downstream.touch()
        downstream.send(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        assert self.peer is not None
        self.peer.half_close()
        if self.peer.eof:
            self.peer.close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.close()


class DownstreamTcp(_Side):
    def __init__(self, owner: TcpProxyFilter, destination: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.owner = owner
        self.destination = destination
        self._pending: list[bytes] = []
        self._idle: asyncio.TimerHandle | None = None
        self._active = False
        self._connect: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self.owner.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        transport.pause_reading()  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.owner.rbac and not self._rbac_allows(transport):
            self.close()   # network RBAC: a denied connection is closed
            return
        self._connect = asyncio.get_running_loop().create_task(self._open_upstream())

    def _rbac_allows(self, transport: asyncio.BaseTransport) -> bool:
        peer = peer_certificate(transport.get_extra_info("ssl_object"))
        remote = transport.get_extra_info("peername") or ("", 0)
        local = self.destination or transport.get_extra_info("sockname") or ("", 0)
        subject = Subject(remote_ip=remote[0], destination_ip=local[0], destination_port=local[1],
                          peer_uris=peer.uris if peer is not None else (), authenticated=peer is not None)
        return allowed(self.owner.rbac, subject, self.owner.rbac_stats)

    async def _open_upstream(self) -> None:
        owner = self.owner
        cluster = owner.clusters.get(owner.config.pick_cluster(owner.rng))
        loop = asyncio.get_running_loop()
        if cluster is None:
            owner.stats.downstream_cx_no_route += 1
            self.close()
            return
        for _ in range(owner.config.max_connect_attempts):
            if cluster.config.type == "ORIGINAL_DST":
                host = Host(*self.destination) if self.destination is not None else None
            else:
                host = cluster.choose(None)
            if host is None:
                cluster.stats.upstream_cx_none_healthy += 1
                break
            if not cluster.breaker.try_open_connection():
                break
            cluster.stats.upstream_cx_total += 1
            tls = cluster.transport_socket(host)
            try:
                if tls is None:
                    _, upstream = await asyncio.wait_for(
                        loop.create_connection(lambda: UpstreamTcp(self), host.address, host.port),
                        cluster.config.connect_timeout)
                else:
                    _, upstream = await asyncio.wait_for(
                        loop.create_connection(lambda: UpstreamTcp(self), host.address, host.port,
                                               ssl=tls.context(), server_hostname=tls.config.sni),
                        cluster.config.connect_timeout)
                    assert upstream.transport is not None
                    if not tls.san_verified(upstream.transport.get_extra_info("ssl_object")):
                        upstream.peer = None
                        upstream.transport.abort()
                        raise ConnectionError("TLS error: certificate SAN verification failed")
                    tls.stats.handshake += 1
            except (OSError, TimeoutError, SecretNotReady) as error:
                if tls is not None and isinstance(error, ssl.SSLError):
                    tls.stats.connection_error += 1
                cluster.breaker.close_connection()
                cluster.stats.upstream_cx_connect_fail += 1
                cluster.record_outcome(host, None)
                continue
            if self.closed:
                upstream.close()
                cluster.breaker.close_connection()
                return
            self._attach(upstream, cluster, host)
            return
        self.close()

    def _attach(self, upstream: UpstreamTcp, cluster: Cluster, host: object) -> None:
        self.peer = upstream
        self._active = True
        cluster.stats.upstream_cx_active += 1
        self._cluster = cluster
        sock = upstream.transport.get_extra_info("socket") if upstream.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in self._pending:
            upstream.send(data)
        self._pending.clear()
        if self.eof:
            upstream.half_close()
        elif self.transport is not None:
            self.transport.resume_reading()
        self.touch()

    def data_received(self, data: bytes) -> None:
        self.owner.stats.downstream_cx_rx_bytes_total += len(data)
        if self.peer is None:
            self._pending.append(data)
            return
        self.touch()
        self.peer.send(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.peer is not None:
            self.peer.half_close()
            if self.peer.eof:
                self.peer.close()
                return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.stats.downstream_cx_active -= 1
        if self._idle is not None:
            self._idle.cancel()
        if self._connect is not None and not self._connect.done():
            self._connect.cancel()
        if self.peer is not None:
            self.peer.close()
        if self._active:
            self._active = False
            self._cluster.breaker.close_connection()
            self._cluster.stats.upstream_cx_active -= 1
            self._cluster.stats.upstream_cx_destroy += 1

    def touch(self) -> None:
        timeout = self.owner.config.idle_timeout
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        if self._idle is None:
            self._idle = loop.call_later(timeout, self._check_idle)

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        remaining = self.last_activity + self.owner.config.idle_timeout - loop.time()
        if remaining > 0:
            self._idle = loop.call_later(remaining, self._check_idle)
            return
        self._idle = None
        self.owner.stats.idle_timeout += 1
        self.close()
