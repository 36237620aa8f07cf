"""The tcp_proxy network filter: one upstream connection per downstream connection, bytes
relayed both ways.

Rules (envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy):
- the cluster is `cluster`, or one of `weighted_clusters` drawn per connection by weight;
- the host comes from the cluster's balancer; a failed connect is retried on a new host up
  to `max_connect_attempts` (default 1), after which the downstream connection is closed:
  reset (RST) if the client had sent bytes, which never got anywhere, else with FIN. That is
  what Envoy's clients see: Envoy reads nothing before the upstream is up, and the kernel
  resets a socket closed with unread input; the bytes held here were read, so the reset is
  asked for (SO_LINGER 0);
- bytes read before the upstream connection is up are held (and reading paused), then sent;
- a half-close (FIN) on one side is passed to the other (to a TLS side, which asyncio
  cannot half-close, as a full close after its writes are flushed); the pair closes when
  both sides are done or either side resets; `idle_timeout` (default 1 h, 0 disables) closes a pair
  with no traffic either way: no data sent or received on either socket since it was attached
  (as Envoy resets its timer on every read and every write);
- flow control: when one side holds 1 MiB unsent (Envoy's per_connection_buffer_limit_bytes
  default) the other side stops reading until it drains.
- stats: tcp.PREFIX.downstream_cx_rx_bytes_total / tx counts every byte relayed each way;
  the cluster's upstream_cx_rx/tx_bytes_total the bytes read from and sent to its upstream
  connections (one native add per chunk on the connection, summed into the cluster when it
  closes), and upstream_cx_destroy_local / _remote who closed each upstream connection:
  Tulle (the client went, an idle timeout, or the client's FIN completed the pair) or the
  upstream (a reset, or its FIN completed the pair), as Envoy counts them.
- `access_log`: one line per connection when it closes (proxy/tcp_access_log.py).

Theory of operation: each side is an asyncio protocol; what one side reads is written to the
other's transport, with as few Python calls per chunk as possible (small request/response
traffic lives there): the count, the peer's write, the bulk test. The module is compiled
(mypyc_build.py), its sides native classes (protocols by duck typing, see _Side). Between two
plain TCP sockets (no TLS on either side), a read of 64 KiB or more says the direction carries
bulk data: from then on splice(2) moves it through a pipe without copying it into Python
(proxy/splice_pump.py), still counted; a TLS side always stays on its transport, which
encrypts and decrypts.

The idle timer takes no clock reading per chunk: the kernel already stamps each TCP socket's
last data sent and received (TCP_INFO's tcpi_last_data_sent/recv, in ms), for spliced bytes
too. So the timer is armed once for the whole timeout and, when it fires, reads both sockets'
stamps: a pair quiet for less than the timeout waits out the rest, else it is closed.

Why the relay is not handed to the kernel with a BPF sockmap (an sk_skb stream verdict that
redirects each socket's ingress to its peer's egress, as Cilium's socket acceleration did):
measured on kernel 6.18 with bench/proxy_tcp.py's method and a one-pair prototype, it
moved bulk at 0.72x splice's rate for 1.6x the machine's CPU per GB (a kworker sends each
redirected skb from the peer's psock backlog), and it has no back-pressure: a client wrote
256 MiB through it to an upstream that read nothing without ever blocking, the bytes held
in the psock backlog outside TCP's memory accounting. Small request/response did gain (1.4x
Envoy's requests/s, 0.7x this path's machine CPU per request), not enough to carry that.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final, cast

from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy

from proxy import splice_pump
from proxy.access_log import AccessLogConfig, AccessLogWriter
from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join, seconds
from proxy.rbac import RbacConfig, RbacStats, Subject, allowed
from proxy.splice_pump import SplicePump
from proxy.stats import ListenerStats, TcpProxyStats
from proxy.tls.peer_certificate import peer_certificate
from proxy.tls.transport_socket import SecretNotReady
from proxy.upstream.host import Host

if TYPE_CHECKING:
    from proxy.upstream.cluster import Cluster

SPLICE_THRESHOLD: Final = 65536   # a read this large is a bulk transfer: the kernel moves the rest
BUFFER_LIMIT: Final = 1 << 20     # a side's unsent bytes before its peer stops reading (Envoy's default)
# struct tcp_info (linux/tcp.h, a stable ABI): tcpi_last_data_sent, tcpi_last_ack_sent (unused),
# tcpi_last_data_recv, in milliseconds ago, from byte 44 on
_TCP_INFO_TIMES: Final = struct.Struct("=I4xI")
_TCP_INFO_TIMES_AT: Final = 44
_TCP_INFO_SIZE: Final = 56


@dataclass(frozen=True, slots=True)
class TcpProxyConfig:
    stat_prefix: str
    cluster: str = ""
    weighted_clusters: tuple[tuple[str, int], ...] = ()
    idle_timeout: float = 3600.0
    max_connect_attempts: int = 1
    access_logs: tuple[AccessLogConfig, ...] = ()

    @classmethod
    def from_proto(cls, message: TcpProxy, path: str) -> TcpProxyConfig:
        reject_unsupported(message, path, ("stat_prefix", "cluster", "weighted_clusters",
                                           "idle_timeout", "max_connect_attempts", "access_log"))
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
            access_logs=tuple(AccessLogConfig.from_proto(log, f"{path}.access_log[{index}]")
                              for index, log in enumerate(message.access_log)),
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
                 rbac: tuple[RbacConfig, ...] = (), buffer_limit: int | None = None) -> None:
        self.config = config
        self.buffer_limit = buffer_limit or BUFFER_LIMIT   # the listener's, for the client side
        self.clusters = clusters
        self.rng = rng
        self.stats = TcpProxyStats()
        # the listener's, whose downstream_cx_active/destroy its connections move
        self.listener_stats = ListenerStats()
        self.rbac = rbac
        self.rbac_stats = RbacStats()
        self.access_log: AccessLogWriter | None = None
        self.connection_type: Callable[[TcpProxyFilter, tuple[str, int] | None], DownstreamTcp] = DownstreamTcp
        if config.access_logs:   # connections that count and log (a module that imports this one)
            from proxy.tcp_access_log import TCP_OPERATORS, LoggedDownstreamTcp
            self.access_log = AccessLogWriter(config.access_logs, TCP_OPERATORS)
            self.connection_type = LoggedDownstreamTcp

    def protocol(self, destination: tuple[str, int] | None = None, server_name: str = "") -> asyncio.BaseProtocol:
        """A connection's protocol; `destination` is its original destination (what an
        ORIGINAL_DST cluster connects to), `server_name` its SNI (for the access log)."""
        connection = self.connection_type(self, destination)
        connection.server_name = server_name
        return cast(asyncio.BaseProtocol, connection)   # by duck typing: see _Side

    def extra_stats(self) -> dict[str, int]:
        if not self.rbac:
            return {}
        return {"rbac.allowed": self.rbac_stats.allowed, "rbac.denied": self.rbac_stats.denied}


_LINGER_RESET = struct.pack("ii", 1, 0)   # linger on, 0 s: close() sends RST


def _drop(data: bytes) -> None:
    """Where a side's bytes go once its peer is closing: nowhere."""


class _Side:
    """One end of the relay. `forward` passes what this side reads on (the peer transport's
    write once both are up); `pump`, once set, reads this side instead of its transport.

    An asyncio protocol by duck typing, as uvloop and asyncio call protocols: compiled, a
    class deriving from asyncio.Protocol would be an ordinary Python class (attributes in
    slots read through descriptors), this one is a native one (struct fields)."""

    __slots__ = ("closed", "eof", "forward", "last_fin", "peer", "pump", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False
        self.closed = False
        self.last_fin = False   # this side's FIN completed the pair: its socket's peer closed it
        self.forward: Callable[[bytes], None] = _drop
        self.pump: SplicePump | None = None

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed and peer.pump is None:
            peer.transport.resume_reading()

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

    def end_of_stream(self) -> bool:
        """This side sent its FIN: pass it on; False when both sides have (the pair is done)."""
        self.eof = True
        peer = self.peer
        if peer is not None:
            peer.half_close()
            if peer.eof:
                self.last_fin = True
                peer.close()
                return False
        return True

    def eof_received(self) -> bool | None:
        return self.end_of_stream()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._stop_pumps()
            self.transport.close()

    def _stop_pumps(self) -> None:
        """Before this side's socket closes: the pumps hold duplicates of it."""
        if self.peer is not None:
            self.peer.forward = _drop
            if self.peer.pump is not None:
                self.peer.pump.stop()
        if self.pump is not None:
            self.pump.stop()


class UpstreamTcp(_Side):
    __slots__ = ("down", "rx_bytes", "stats")

    def __init__(self, downstream: DownstreamTcp) -> None:
        super().__init__()
        self.peer = self.down = downstream
        self.stats = downstream.stats
        self.rx_bytes = 0   # read from the upstream (the downstream side counts what it sends)
        self.forward = self._forward_while_attaching

    def _forward_while_attaching(self, data: bytes) -> None:
        """The upstream may speak first, before the pair is attached (it then forwards
        straight to the downstream transport)."""
        if not self.down.closed and self.down.transport is not None:
            self.down.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.stats.downstream_cx_tx_bytes_total += size
        self.rx_bytes += size
        self.forward(data)
        if size >= SPLICE_THRESHOLD:
            self.down.splice(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # close() marks it before its transport goes; a pair completed by the upstream's FIN
        # was closed by the upstream, even when the downstream's close reached it first
        closed_here = self.closed and not self.last_fin
        self.closed = True
        down = self.down
        cluster = down._cluster
        if cluster is not None and down.peer is self:   # attached: the cluster's connection
            stats = cluster.stats
            if closed_here:
                stats.upstream_cx_destroy_local += 1
            else:
                stats.upstream_cx_destroy_remote += 1
            stats.closed_bytes[0] += self.rx_bytes
            stats.closed_bytes[1] += down.upstream_tx_bytes
        self._stop_pumps()
        if self.peer is not None:
            self.peer.close()


class DownstreamTcp(_Side):
    __slots__ = ("_active", "_attached_at", "_cluster", "_connect", "_idle", "_pending", "destination",
                 "owner", "server_name", "spliceable", "stats", "upstream_tx_bytes")

    def __init__(self, owner: TcpProxyFilter, destination: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.owner = owner
        self.destination = destination
        self.server_name = ""
        self.stats = owner.stats
        self.upstream_tx_bytes = 0   # read here, so written to the upstream
        self._attached_at = 0.0
        self.spliceable = False    # both sides plain TCP: a bulk direction may go to a SplicePump
        self._pending: list[bytes] = []
        self.forward = self._pending.append   # until the upstream is up
        self._idle: asyncio.TimerHandle | None = None
        self._active = False
        self._connect: asyncio.Task[None] | None = None
        self._cluster: Cluster | None = None

    def new_upstream(self) -> UpstreamTcp:
        """The upstream side's protocol (the access log's subclass makes its own)."""
        return UpstreamTcp(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        self.owner.listener_stats.downstream_cx_active += 1
        transport.pause_reading()  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.owner.rbac and not self._rbac_allows(transport):
            self.close()   # network RBAC: a denied connection is closed
            return
        self._connect = loop.create_task(self._open_upstream())

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
        destination = self.destination
        # the upstream side is a protocol by duck typing (see _Side)
        factory = cast(Callable[[], asyncio.BaseProtocol], self.new_upstream)
        for _ in range(owner.config.max_connect_attempts):
            if cluster.config.type == "ORIGINAL_DST":
                host = Host(destination[0], destination[1]) if destination is not None else None
            else:
                host = cluster.choose(None)
            if host is None:
                cluster.stats.upstream_cx_none_healthy += 1
                self.upstream_failed("UH", cluster, None, None)
                break
            if not cluster.breaker.try_open_connection():
                self.upstream_failed("UO", cluster, host, None)
                break
            cluster.stats.upstream_cx_total += 1
            tls = cluster.transport_socket(host)
            try:
                if tls is None:
                    _, made = await asyncio.wait_for(
                        loop.create_connection(factory, host.address, host.port),
                        cluster.config.connect_timeout)
                    upstream = cast(UpstreamTcp, made)
                else:
                    _, made = await asyncio.wait_for(
                        loop.create_connection(factory, host.address, host.port,
                                               ssl=tls.context(), server_hostname=tls.config.sni),
                        cluster.config.connect_timeout)
                    upstream = cast(UpstreamTcp, made)
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
                self.upstream_failed("UF", cluster, host, error)
                continue
            if self.closed:
                upstream.close()
                cluster.breaker.close_connection()
                return
            self._attach(upstream, cluster, host)
            return
        if self._pending and self.transport is not None and not self.closed:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.closed = True
            self.transport.abort()
            return
        self.close()

    def upstream_failed(self, flag: str, cluster: Cluster, host: Host | None,
                        error: BaseException | None) -> None:
        """No upstream this time (Envoy's response flag): for the access log's subclass."""

    def _attach(self, upstream: UpstreamTcp, cluster: Cluster, host: object) -> None:
        assert upstream.transport is not None and self.transport is not None
        self.peer = upstream
        self._active = True
        cluster.stats.upstream_cx_active += 1
        self._cluster = cluster
        up_socket = upstream.transport.get_extra_info("socket")
        if up_socket is not None:
            up_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cluster.config.tcp_keepalive is not None:   # upstream_connection_options
                cluster.config.tcp_keepalive.apply(up_socket)
        # per_connection_buffer_limit_bytes: the listener's for the client, the cluster's upstream
        self.transport.set_write_buffer_limits(high=self.owner.buffer_limit)
        upstream.transport.set_write_buffer_limits(
            high=cluster.config.buffer_limit or BUFFER_LIMIT)
        self.spliceable = (splice_pump.AVAILABLE and up_socket is not None
                           and self.transport.get_extra_info("socket") is not None
                           and self.transport.get_extra_info("ssl_object") is None
                           and upstream.transport.get_extra_info("ssl_object") is None)
        write = upstream.transport.write
        for data in self._pending:
            write(data)
        self._pending.clear()
        self.forward = write
        upstream.forward = self.transport.write
        if self.eof:
            upstream.half_close()
        else:
            self.transport.resume_reading()
        self.touch()

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.stats.downstream_cx_rx_bytes_total += size
        self.upstream_tx_bytes += size
        self.forward(data)
        if size >= SPLICE_THRESHOLD:
            self.splice(self)

    def splice(self, source: _Side) -> None:
        """A bulk read came from `source`: from now on the kernel moves that direction
        (proxy/splice_pump.py), if both sides are plain TCP and the destination holds no
        unsent bytes (else the spliced ones would overtake them; the next bulk read retries)."""
        destination = source.peer
        if (not self.spliceable or source.pump is not None or source.closed or source.eof
                or destination is None or destination.closed or destination.transport is None
                or source.transport is None or destination.transport.get_write_buffer_size()):
            return
        source_socket = source.transport.get_extra_info("socket")
        destination_socket = destination.transport.get_extra_info("socket")
        moved = self._moved_upstream if source is self else self._moved_downstream
        source.transport.pause_reading()
        try:
            source.pump = SplicePump(asyncio.get_running_loop(), source_socket.fileno(),
                                     destination_socket.fileno(), moved, partial(self._pump_ended, source),
                                     partial(self._pump_failed, source))
        except OSError:   # out of descriptors: this pair stays on its transports
            self.spliceable = False
            source.transport.resume_reading()

    def _moved_upstream(self, size: int) -> None:
        self.stats.downstream_cx_rx_bytes_total += size
        self.upstream_tx_bytes += size

    def _moved_downstream(self, size: int) -> None:
        self.stats.downstream_cx_tx_bytes_total += size
        peer = self.peer
        if isinstance(peer, UpstreamTcp):
            peer.rx_bytes += size

    def _pump_ended(self, source: _Side) -> None:
        if not source.end_of_stream():
            source.close()

    def _pump_failed(self, source: _Side, error: OSError) -> None:
        source.close()
        if source.peer is not None:
            source.peer.close()

    def eof_received(self) -> bool | None:
        if self.peer is None:   # the upstream is not up yet: its FIN is passed on once it is
            self.eof = True
            return True
        return self.end_of_stream()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_pumps()
        self.stats.downstream_cx_active -= 1
        listener_stats = self.owner.listener_stats
        listener_stats.downstream_cx_active -= 1
        listener_stats.downstream_cx_destroy += 1
        if self._idle is not None:
            self._idle.cancel()
        if self._connect is not None and not self._connect.done():
            self._connect.cancel()
        if self.peer is not None:
            self.peer.close()
        if self._active and self._cluster is not None:
            self._active = False
            self._cluster.breaker.close_connection()
            self._cluster.stats.upstream_cx_active -= 1
            self._cluster.stats.upstream_cx_destroy += 1

    def touch(self) -> None:
        """Start the idle timer: the pair is up."""
        timeout = self.owner.config.idle_timeout
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self._attached_at = loop.time()
        if self._idle is None:
            self._idle = loop.call_later(timeout, self._check_idle)

    def _check_idle(self) -> None:
        """The timer fired: close the pair if it has been quiet for the whole timeout, else
        wait out the rest. Quiet: no data sent or received on either socket, which the kernel
        stamps (see the module's rules), and none since the pair was attached."""
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._attached_at
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                quiet = min(quiet, _quiet_for(side.transport))
        remaining = self.owner.config.idle_timeout - quiet
        if remaining > 0:
            self._idle = loop.call_later(remaining, self._check_idle)
            return
        self._idle = None
        self.owner.stats.idle_timeout += 1
        self.close()


def _quiet_for(transport: asyncio.Transport) -> float:
    """Seconds since this side's socket last sent or received data (TCP_INFO); 0.0 when the
    kernel cannot tell (no TCP socket): such a pair is never closed as idle."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0.0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return 0.0
    if len(info) < _TCP_INFO_SIZE:
        return 0.0
    sent, received = _TCP_INFO_TIMES.unpack_from(info, _TCP_INFO_TIMES_AT)
    return float(min(sent, received)) / 1000
