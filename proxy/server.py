"""The running proxy: clusters, listeners and admin composed from a BootstrapConfig, and
changed at run time by xDS.

Theory of operation: static clusters start first (STRICT_DNS clusters resolve, health
checks warm, before any listener accepts, as Envoy initialises clusters before listeners),
then every static listener binds, then the admin listener, then the ADS client if the
bootstrap has dynamic_resources. Each HTTP listener gets its own connection manager (stats
under `http.STAT_PREFIX`), each tcp_proxy listener its filter (`tcp.STAT_PREFIX`); clusters
are shared through one dict, so a cluster added or replaced by CDS is what the next request
sees, while requests in flight keep the Cluster object they started with.

Active health checks run once per proxy: in the only worker, or under --concurrency in the
leader, whose results every follower applies (proxy/upstream/health/workers.py); so does
outlier detection, the leader's detectors counting every worker's outcomes
(proxy/upstream/outlier_workers.py), and DNS resolution, the leader's answers setting every
worker's hosts (proxy/upstream/dns_workers.py). Circuit breaker thresholds hold across the
workers, whose counts share memory (proxy/upstream/shared_breaker.py).

TLS secrets named by SDS (`tls_certificate_sds_secret_configs`, validation contexts) come
over one SDS stream per SDS cluster (proxy/tls/sds_client.py) into one SecretStore; static
clusters and every listener wait for their secrets before serving (Envoy's warming); a
rotated secret is used by the next handshake.

xDS updates (`apply`) validate the whole response first (nothing is half-applied), then:
CDS adds, replaces (when the resource changed) and removes clusters; EDS sets the hosts of
EDS clusters; LDS starts, replaces and stops listeners — a replaced listener stops
accepting and its open connections finish on the old configuration (drain); RDS swaps the
route table of every connection manager that names it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener as ListenerProto
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from proxy.admin.endpoints import AdminState, host_rows
from proxy.admin.server import AdminConnection
from proxy.bootstrap import BootstrapConfig
from proxy.config_error import ConfigError, reject_unsupported
from proxy.connection_dispatch import ChainRuntime, Dispatcher, ListenerStats
from proxy.http.connection_manager import HttpConnectionManager
from proxy.http.downstream import DownstreamConnection
from proxy.listener import FilterChainConfig, ListenerConfig
from proxy.local_address import first_non_loopback_ipv4
from proxy.router.route_table import RouteTable
from proxy.stats import StatsStore
from proxy.tcp_proxy import TcpProxyFilter
from proxy.tls.secrets import SecretStore
from proxy.tls.transport_socket import SecretSource, TlsStats, TlsTransport
from proxy.upstream.cluster import Cluster
from proxy.upstream.cluster_config import ClusterConfig, EndpointConfig, locality_endpoints
from proxy.upstream.dns_workers import (
    LOCAL_DNS,
    DnsResolutions,
    FollowerResolutions,
    LeaderResolutions,
    Resolution,
)
from proxy.upstream.health.report import ClusterHealth
from proxy.upstream.health.workers import (
    LOCAL,
    FollowerHealthChecks,
    HealthCheckers,
    LeaderHealthChecks,
)
from proxy.upstream.outlier_workers import (
    LOCAL_OUTLIER,
    EjectionReport,
    FollowerOutlierDetectors,
    LeaderOutlierDetectors,
    OutcomeBatch,
    OutcomeRun,
    OutlierDetectors,
)
from proxy.upstream.shared_breaker import BreakerCounters
from proxy.worker_link import (
    EJECTIONS,
    HEALTH,
    HOSTS,
    OUTCOMES,
    RESOLUTION,
    SECRETS,
    SERVER_HEALTH,
    SNAPSHOT_INTERVAL,
    STARTED,
    STATS,
    XDS,
    ForwardedSecrets,
    ForwardingSecretStore,
    LinkProtocol,
    decode_ejections,
    decode_health,
    decode_hosts,
    decode_outcomes,
    decode_resolution,
    decode_server_health,
    decode_stats,
    decode_update,
    encode_ejections,
    encode_frame,
    encode_health,
    encode_hosts,
    encode_outcomes,
    encode_resolution,
    encode_server_health,
    encode_stats,
    encode_update,
    open_link,
)
from proxy.xds.delta import DeltaState
from proxy.xds.sotw import CLUSTER, ENDPOINTS, LISTENER, ROUTE, SotwState

if TYPE_CHECKING:   # loaded only when used: grpc and cryptography cost ~20 MiB of RSS
    from proxy.tls.identity_client import IdentityClient
    from proxy.tls.sds_client import SdsClient
    from proxy.xds.client import AdsClient

log = logging.getLogger("tulle.proxy")


@dataclass
class RunningListener:
    config: ListenerConfig
    server: asyncio.AbstractServer | Dispatcher
    managers: list[HttpConnectionManager]
    proto: ListenerProto | None = None


def _call_soon(callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_soon(callback)


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


class ProxyServer:
    def __init__(self, config: BootstrapConfig, reuse_port: bool = False,
                 rng: random.Random | None = None, admin: bool = True,
                 followers: Sequence[socket.socket] = (), leader: socket.socket | None = None,
                 identity_socket: str = "", breakers: BreakerCounters | None = None) -> None:
        """`followers` (the leader worker) / `leader` (a follower): the worker links of
        --concurrency (proxy/worker_link.py). `identity_socket`: the node agent's identity
        socket, for the workload's own key and certificate (proxy/tls/identity_client.py).
        `breakers`: --concurrency's circuit breaker counts, shared by the workers
        (proxy/upstream/shared_breaker.py)."""
        self.config = config
        self._follower_sockets = list(followers)
        self._leader_socket = leader
        self._links: list[LinkProtocol] = []
        self._updates: asyncio.Queue[bytes] = asyncio.Queue()
        self._link_tasks: list[asyncio.Task[None]] = []
        self.reuse_port = reuse_port
        self.serve_admin = admin
        self.rng = rng or random.Random()
        self.stats = StatsStore()
        # --concurrency: secrets come once, to the leader, which forwards them (worker_link)
        self.secrets = ForwardingSecretStore() if followers else SecretStore()
        self.forwarded_secrets = ForwardedSecrets(self.secrets) if leader is not None else None
        # --concurrency: the leader probes, the followers take its results (worker_link)
        self.followers_health = FollowerHealthChecks() if leader is not None else None
        self.health: HealthCheckers = (LeaderHealthChecks(self._send_health) if followers
                                       else self.followers_health or LOCAL)
        # --concurrency: the leader's outlier detectors count every worker's outcomes
        self.leader_outliers = LeaderOutlierDetectors(self._send_ejections) if followers else None
        self.follower_outliers = (FollowerOutlierDetectors(OutcomeBatch(self._send_outcomes, _call_soon, _call_later))
                                  if leader is not None else None)
        self.outliers: OutlierDetectors = self.leader_outliers or self.follower_outliers or LOCAL_OUTLIER
        # --concurrency: the leader resolves DNS clusters, the followers take its answers
        self.follower_dns = FollowerResolutions() if leader is not None else None
        self.dns: DnsResolutions = (LeaderResolutions(self._send_resolution) if followers
                                    else self.follower_dns or LOCAL_DNS)
        self.breakers = breakers
        self._follower_traffic: set[str] = set()   # clusters (stat names) a follower sent requests
        self.clusters: dict[str, Cluster] = {}
        self.dynamic_clusters: dict[str, ClusterProto] = {}
        self.listeners: dict[str, RunningListener] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.managers: list[HttpConnectionManager] = []
        self.route_tables: dict[str, RouteTable] = {}
        self.stopped = asyncio.Event()
        self.route_protos: dict[str, RouteConfiguration] = {}
        self.admin_state = AdminState(config, self.stats, self.clusters, quit=self.stopped.set,
                                      dynamic=self._dynamic_resources, secrets=self.secrets,
                                      health_changed=self._health_changed, starting=len(self._follower_sockets))
        self.ads: AdsClient | None = None
        self.sds: dict[str, SdsClient] = {}
        self.identity: IdentityClient | None = None
        if identity_socket and leader is None:   # a follower's secrets come from the leader
            from proxy.tls.identity_client import IdentityClient

            self.identity = IdentityClient(identity_socket, self.secrets)
        self._identity_task: asyncio.Task[None] | None = None
        self._unbound: dict[tuple[str, int], Dispatcher] = {}
        self._sds_tasks: list[asyncio.Task[None]] = []
        self._ads_task: asyncio.Task[None] | None = None
        self._local_address = ""
        self._listeners_applied = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._local_address = first_non_loopback_ipv4()
        if self._leader_socket is not None:   # first: the secrets the listeners wait for come this way
            self._links.append(await open_link(self._leader_socket, self._from_leader))
        for index, sock in enumerate(self._follower_sockets):   # before any cluster: health reports
            link = await open_link(sock, partial(self._from_follower, index))
            self._links.append(link)
            assert isinstance(self.secrets, ForwardingSecretStore)
            self.secrets.link(link)
        for cluster_config in self.config.clusters:
            self._add_cluster(cluster_config)
        await asyncio.gather(*(cluster.start() for cluster in self.clusters.values()))
        for client in list(self.sds.values()):   # static clusters warm until their secrets came
            await client.ready(client.names)
        if self.forwarded_secrets is not None:
            await self.forwarded_secrets.ready(self.forwarded_secrets.names)
        if self.identity is not None and self._identity_task is not None:
            await self.identity.ready(self.identity.names)
        for listener in self.config.listeners:
            await self._start_listener(listener)
        admin = self.config.admin
        if admin is not None and self.serve_admin:
            server = await loop.create_server(lambda: AdminConnection(self.admin_state),
                                              admin.address, admin.port, reuse_address=True,
                                              reuse_port=self.reuse_port or None)
            self.servers.append(server)
        if self._leader_socket is not None:
            self._links[0].send(encode_frame(STARTED, b""))
            self._link_tasks.append(loop.create_task(self._apply_forwarded()))
            self._link_tasks.append(loop.create_task(self._report_stats()))
        elif self.config.ads is not None:
            self.admin_state.initializing = self.config.ads.lds
            self._start_ads()

    def _add_cluster(self, cluster_config: ClusterConfig) -> Cluster:
        tls = [match.tls for match in cluster_config.socket_matches if match.tls is not None]
        if cluster_config.transport_socket is not None:
            tls.append(cluster_config.transport_socket)
        for config in tls:
            self._subscribe_secrets(config.sds_sources())
        # every worker makes its clusters in the same order: the same generation's shared counts
        breaker = self.breakers.breaker(cluster_config.thresholds) if self.breakers is not None else None
        cluster = Cluster(cluster_config, self.rng, self.secrets, self.health, self.outliers, self.dns, breaker)
        if self._follower_sockets:
            cluster.traffic_elsewhere = partial(self._follower_traffic.__contains__, cluster_config.stat_name)
        self.clusters[cluster.name] = cluster
        self.stats.register("cluster", cluster_config.stat_name, cluster.stats, cluster.extra_stats)
        return cluster

    def _health_changed(self, failed: bool) -> None:
        """Envoy's drain_type: a DEFAULT listener drains while the server is health-check failed
        (admin /healthcheck/fail): its responses close their connections until
        /healthcheck/ok; a MODIFY_ONLY listener drains only when it is replaced or removed.
        The state is the server's, so under --concurrency the leader (whose admin it is) passes
        it to every follower."""
        if self._follower_sockets:
            frame = encode_server_health(failed)
            for link in self._links:
                link.send(frame)
        for running in self.listeners.values():
            if running.config.drain_type == "DEFAULT":
                for manager in running.managers:
                    manager.draining = failed

    async def _start_listener(self, listener: ListenerConfig, proto: ListenerProto | None = None) -> None:
        loop = asyncio.get_running_loop()
        managers: list[HttpConnectionManager] = []
        address = listener.address
        stats = ListenerStats()
        self.stats.register("listener", f"{address.address}_{address.port}", stats)
        chains = [await self._chain_runtime(chain, managers, listener.buffer_limit, stats)
                  for chain in listener.all_chains()]
        default = chains.pop() if listener.default_chain is not None else None
        if self.admin_state.health_check_failed and listener.drain_type == "DEFAULT":
            for manager in managers:
                manager.draining = True
        server: asyncio.AbstractServer | Dispatcher
        if listener.simple and listener.bind_to_port:
            runtime = default or chains[0]
            context = runtime.tls.server_context() if runtime.tls is not None else None

            def accepted() -> asyncio.BaseProtocol:
                stats.downstream_cx_total += 1   # (the Dispatcher counts its own)
                return runtime.protocol(None, "")
            server = await loop.create_server(
                accepted, address.address, address.port,
                reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024, ssl=context)
            self.servers.append(server)
        else:
            server = Dispatcher(listener, chains, default, self._listener_at, stats)
            if listener.bind_to_port:
                server.bind(self.reuse_port)
                self.servers.append(server)  # type: ignore[arg-type]
            else:
                self._unbound[(address.address, address.port)] = server
        self.listeners[listener.name] = RunningListener(listener, server, managers, proto)
        log.info("listener %s on %s:%s%s", listener.name, address.address, address.port,
                 "" if listener.bind_to_port else " (not bound)")

    async def _chain_runtime(self, chain: FilterChainConfig, managers: list[HttpConnectionManager],
                             buffer_limit: int | None, listener_stats: ListenerStats) -> ChainRuntime:
        """The chain's filter, counting its connections' ends in `listener_stats` too."""
        tls = None
        if chain.tls is not None:
            await self._secrets_ready(chain.tls.sds_sources())
            tls = TlsTransport(chain.tls, self.secrets, TlsStats())
        if chain.http is not None:
            # chains of one listener with the same HCM (e.g. a port's TLS and plaintext
            # chains) share a connection manager, hence its stats
            manager = next((m for m in managers if m.config == chain.http), None)
            if manager is None:
                manager = HttpConnectionManager(chain.http, self.clusters, self.rng, self._local_address)
                if chain.http.rds_name:
                    manager.route_table = self.route_tables.get(chain.http.rds_name)
                manager.listener_stats = listener_stats
                managers.append(manager)
                self.managers.append(manager)
                manager.stats = self.stats.share("http", chain.http.stat_prefix, manager.stats, manager.extra_stat_values)
                manager.codec_stats = self.stats.share("http1", "", manager.codec_stats)

            def http(destination: tuple[str, int] | None, server_name: str,
                     manager: HttpConnectionManager = manager) -> DownstreamConnection:
                connection = manager.connection_class(manager)
                connection.destination = destination
                connection.server_name = server_name
                connection.buffer_limit = buffer_limit
                return connection
            return ChainRuntime(chain, http, tls)
        assert chain.tcp is not None
        tcp = TcpProxyFilter(chain.tcp, self.clusters, self.rng, chain.rbac, buffer_limit)
        tcp.listener_stats = listener_stats
        tcp.stats = self.stats.share("tcp", chain.tcp.stat_prefix, tcp.stats, tcp.extra_stats)
        return ChainRuntime(chain, tcp.protocol, tls)

    def _listener_at(self, destination: tuple[str, int]) -> Dispatcher | None:
        """use_original_dst: the listener for a captured connection's original destination."""
        return self._unbound.get(destination) or self._unbound.get(("0.0.0.0", destination[1]))

    # SDS

    def _subscribe_secrets(self, sources: Sequence[SecretSource]
                           ) -> list[tuple[SdsClient | IdentityClient | ForwardedSecrets, str]]:
        """Subscribe each secret on its SDS cluster's stream (started on first use); with
        --identity-socket, the workload's own secrets come from the identity client; in a
        follower worker, every secret comes from the leader."""
        subscribed: list[tuple[SdsClient | IdentityClient | ForwardedSecrets, str]] = []
        for source in sources:
            if self.forwarded_secrets is not None:
                self.forwarded_secrets.subscribe((source.name,))
                subscribed.append((self.forwarded_secrets, source.name))
                continue
            if self.identity is not None and source.name in self.identity.names:
                if self._identity_task is None:
                    self._identity_task = asyncio.get_running_loop().create_task(self.identity.run())
                subscribed.append((self.identity, source.name))
                continue
            client = self.sds.get(source.cluster)
            if client is None:
                # grpc is loaded only when a secret comes over SDS
                from proxy.tls.sds_client import SdsClient

                client = self.sds[source.cluster] = SdsClient(
                    self._sds_target(source.cluster),
                    self._node(),
                    self.secrets)
                self._sds_tasks.append(asyncio.get_running_loop().create_task(client.run()))
            client.subscribe((source.name,))
            subscribed.append((client, source.name))
        return subscribed

    async def _secrets_ready(self, sources: Sequence[SecretSource]) -> None:
        """Wait for the secrets a listener needs (Envoy warms a listener until they come)."""
        for client, name in self._subscribe_secrets(sources):
            await client.ready((name,))

    def _node(self) -> Node:
        """The bootstrap's node, as sent to xDS servers (its metadata tells tulle-control
        the pod and the interception mode)."""
        node = Node(id=self.config.node_id, cluster=self.config.node_cluster, user_agent_name="tulle-proxy")
        if self.config.proto is not None and self.config.proto.HasField("node"):
            node.metadata.CopyFrom(self.config.proto.node.metadata)
            node.locality.CopyFrom(self.config.proto.node.locality)
        return node

    def _sds_target(self, cluster_name: str) -> str:
        configs = {config.name: config for config in self.config.clusters}
        config = configs.get(cluster_name)
        if config is None or not config.endpoints:
            raise ConfigError("sds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name",
                              f"{cluster_name!r} is not a static cluster with an endpoint")
        endpoint = config.endpoints[0]
        if endpoint.pipe:
            return f"unix:{endpoint.address}"
        if ":" in endpoint.address:
            return f"[{endpoint.address}]:{endpoint.port}"
        return f"{endpoint.address}:{endpoint.port}"

    def _start_ads(self) -> None:
        ads = self.config.ads
        assert ads is not None
        cluster = self.clusters[ads.cluster]
        hosts = cluster.host_set.hosts
        if not hosts:
            raise ConfigError("dynamic_resources.ads_config", f"cluster {ads.cluster!r} has no host")
        host = hosts[0]
        target = f"[{host.address}]:{host.port}" if ":" in host.address else f"{host.address}:{host.port}"
        node = self._node()
        initial: dict[str, tuple[str, ...]] = {}
        if ads.cds:
            initial[CLUSTER] = ()
        if ads.lds:
            initial[LISTENER] = ()
        eds = self._eds_names()
        if eds:
            initial[ENDPOINTS] = eds
        rds = self._rds_names()
        if rds:
            initial[ROUTE] = rds
        from proxy.xds.client import AdsClient  # grpc is loaded only when ADS is configured

        state = DeltaState(node) if ads.delta else SotwState(node)
        self.ads = AdsClient(target, state, self, initial)
        self._ads_task = asyncio.get_running_loop().create_task(self.ads.run())

    # xDS

    def _dynamic_resources(self) -> dict[str, dict[str, Message]]:
        return {
            "clusters": dict(self.dynamic_clusters),
            "listeners": {name: running.proto for name, running in self.listeners.items()
                          if running.proto is not None},
            "routes": dict(self.route_protos),
        }

    async def apply(self, type_url: str, resources: Sequence[Any]) -> dict[str, tuple[str, ...]]:
        subscriptions = await self._apply(type_url, resources)
        if self._follower_sockets:   # applied here, so valid: the followers take it too
            update = encode_update(type_url, resources)
            for link in self._links:
                link.send(update)
        return subscriptions

    # --concurrency: the leader's updates and the followers' stats

    def _from_leader(self, kind: bytes, payload: bytes) -> None:
        if kind == XDS:
            self._updates.put_nowait(payload)
        elif kind == SECRETS and self.forwarded_secrets is not None:
            self.forwarded_secrets.apply(payload)
        elif kind == HEALTH and self.followers_health is not None:
            self.followers_health.replica.apply(decode_health(payload), asyncio.get_running_loop().time())
        elif kind == RESOLUTION and self.follower_dns is not None:
            self.follower_dns.apply(decode_resolution(payload))
        elif kind == EJECTIONS and self.follower_outliers is not None:
            self.follower_outliers.apply(decode_ejections(payload))
        elif kind == SERVER_HEALTH:
            failed = decode_server_health(payload)
            self.admin_state.health_check_failed = failed
            self._health_changed(failed)

    def _send_health(self, report: ClusterHealth) -> None:
        frame = encode_health(report)
        for link in self._links:
            link.send(frame)

    def _send_ejections(self, report: EjectionReport) -> None:
        frame = encode_ejections(report)
        for link in self._links:
            link.send(frame)

    def _send_resolution(self, report: Resolution) -> None:
        frame = encode_resolution(report)
        for link in self._links:
            link.send(frame)

    def _send_outcomes(self, runs: list[OutcomeRun]) -> None:
        frame = encode_outcomes(runs)
        for link in self._links:   # a follower's one link, to the leader
            link.send(frame)

    async def _apply_forwarded(self) -> None:
        """The leader's updates, applied one at a time in the order it applied them."""
        while True:
            payload = await self._updates.get()
            type_url, resources = decode_update(payload)
            try:
                await self._apply(type_url, resources)
            except ConfigError as error:   # the leader accepted it: only a bug gets here
                log.error("update %s the leader accepted was rejected: %s", type_url, error)

    async def _report_stats(self) -> None:
        while True:
            for link in self._links:
                link.send(encode_stats(list(self.stats.own_values())))
                link.send(encode_hosts(host_rows(self.clusters)))
            await asyncio.sleep(SNAPSHOT_INTERVAL)

    def _from_follower(self, index: int, kind: bytes, payload: bytes) -> None:
        if kind == STATS:
            rows = self.stats.followers[index] = decode_stats(payload)
            self._follower_traffic.update(scope for _, kind_, scope, _, stat, value, _ in rows
                                          if stat == "upstream_rq_total" and value and kind_ == "cluster")
        elif kind == HOSTS:
            self.admin_state.follower_hosts[index] = decode_hosts(payload)
        elif kind == STARTED:
            self.admin_state.starting -= 1
        elif kind == OUTCOMES and self.leader_outliers is not None:
            self.leader_outliers.apply(decode_outcomes(payload), asyncio.get_running_loop().time())

    async def _apply(self, type_url: str, resources: Sequence[Any]) -> dict[str, tuple[str, ...]]:
        if type_url == CLUSTER:
            await self._apply_clusters(resources)
            return {ENDPOINTS: self._eds_names()}
        if type_url == ENDPOINTS:
            self._apply_endpoints(resources)
            return {}
        if type_url == LISTENER:
            await self._apply_listeners(resources)
            self._listeners_applied = True
            self._check_initialized()
            return {ROUTE: self._rds_names()}
        if type_url == ROUTE:
            self._apply_routes(resources)
            self._check_initialized()
            return {}
        raise ConfigError(type_url, "resource type not supported by tulle-proxy")

    def _check_initialized(self) -> None:
        """Envoy's init manager, as far as /ready tells: initialized once the first LDS
        response is applied (its listeners warmed with their secrets, after CDS/EDS, which
        ADS orders first) and every route configuration they name has arrived."""
        if self._listeners_applied and all(name in self.route_tables for name in self._rds_names()):
            self.admin_state.initializing = False

    def _eds_names(self) -> tuple[str, ...]:
        names = []
        for cluster in self.clusters.values():
            if cluster.config.type == "EDS":
                proto = cluster.config.proto
                service = proto.eds_cluster_config.service_name if proto is not None else ""
                names.append(service or cluster.name)
        return tuple(names)

    def _rds_names(self) -> tuple[str, ...]:
        return tuple(sorted({name for running in self.listeners.values() for name in running.config.rds_names()}))

    @staticmethod
    def _decode(resources: Sequence[Any], message_type: type, kind: str) -> list:
        decoded = []
        for index, resource in enumerate(resources):
            message = message_type()
            if not resource.Unpack(message):
                raise ConfigError(f"resources[{index}]", f"is {resource.type_url}, expected {kind}")
            decoded.append(message)
        return decoded

    async def _apply_clusters(self, resources: Sequence[Any]) -> None:
        protos: list[ClusterProto] = self._decode(resources, ClusterProto, "Cluster")
        static = {cluster.name for cluster in self.config.clusters}
        configs: list[ClusterConfig] = []
        for proto in protos:
            path = f"Cluster {proto.name}"
            if proto.name in static:
                raise ConfigError(path, "a static cluster cannot be replaced over CDS")
            config = ClusterConfig.from_proto(proto, path)
            if config.http2:
                raise ConfigError(path, "HTTP/2 upstreams are not supported")
            configs.append(config)
        # validated: now apply
        wanted = {config.name for config in configs}
        for name in list(self.dynamic_clusters):
            if name not in wanted:
                del self.dynamic_clusters[name]
                await self.clusters.pop(name).stop()
        started = []
        for config, proto in zip(configs, protos, strict=True):
            if self.dynamic_clusters.get(config.name) == proto:
                continue
            old = self.clusters.get(config.name)
            self.dynamic_clusters[config.name] = proto
            cluster = self._add_cluster(config)
            if old is not None and old.config.type == "EDS" and config.type == "EDS":
                cluster.set_endpoints(old.config_endpoints)
            started.append(cluster.start())
            if old is not None:
                await old.stop()
        await asyncio.gather(*started)

    def _apply_endpoints(self, resources: Sequence[Any]) -> None:
        assignments: list[ClusterLoadAssignment] = self._decode(resources, ClusterLoadAssignment,
                                                                "ClusterLoadAssignment")
        parsed: dict[str, list[EndpointConfig]] = {}
        for assignment in assignments:
            path = f"ClusterLoadAssignment {assignment.cluster_name}"
            reject_unsupported(assignment, path, ("cluster_name", "endpoints"))
            endpoints = []
            for index, locality in enumerate(assignment.endpoints):
                endpoints.extend(locality_endpoints(locality, f"{path}.endpoints[{index}]", "STATIC"))
            parsed[assignment.cluster_name] = endpoints
        for cluster in self.clusters.values():
            if cluster.config.type != "EDS":
                continue
            proto = cluster.config.proto
            service = (proto.eds_cluster_config.service_name if proto is not None else "") or cluster.name
            if service in parsed:
                cluster.set_endpoints(parsed[service])
                cluster.config_endpoints = tuple(parsed[service])

    async def _apply_listeners(self, resources: Sequence[Any]) -> None:
        protos: list[ListenerProto] = self._decode(resources, ListenerProto, "Listener")
        static = {listener.name for listener in self.config.listeners}
        configs = []
        for proto in protos:
            path = f"Listener {proto.name}"
            if proto.name in static:
                raise ConfigError(path, "a static listener cannot be replaced over LDS")
            configs.append(ListenerConfig.from_proto(proto, path))
        wanted = {config.name for config in configs}
        for name in [name for name in self.listeners if name not in static and name not in wanted]:
            self._drain(self.listeners.pop(name))
        for config, proto in zip(configs, protos, strict=True):
            running = self.listeners.get(config.name)
            if running is not None and running.proto == proto:
                continue
            if running is not None:
                self._drain(running)
            await self._start_listener(config, proto)

    def _drain(self, running: RunningListener) -> None:
        """Stop accepting; connections already open finish their requests on the old
        configuration, then close (HTTP) or run to their end (TCP)."""
        running.server.close()
        for manager in running.managers:
            manager.drain()
        if running.server in self.servers:
            self.servers.remove(running.server)
        address = running.config.address
        if self._unbound.get((address.address, address.port)) is running.server:
            del self._unbound[(address.address, address.port)]

    def _apply_routes(self, resources: Sequence[Any]) -> None:
        protos: list[RouteConfiguration] = self._decode(resources, RouteConfiguration,
                                                        "RouteConfiguration")
        tables = {proto.name: RouteTable.from_proto(proto, f"RouteConfiguration {proto.name}")
                  for proto in protos}
        self.route_tables.update(tables)
        self.route_protos.update({proto.name: proto for proto in protos})
        for running in self.listeners.values():
            for manager in running.managers:
                if manager.config.rds_name in tables:
                    manager.route_table = tables[manager.config.rds_name]

    # shutdown

    def bound_ports(self) -> list[int]:
        ports = []
        for server in self.servers:
            for sock in server.sockets:  # type: ignore[attr-defined]
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    ports.append(sock.getsockname()[1])
        return ports

    async def stop(self) -> None:
        if self._ads_task is not None:
            self._ads_task.cancel()
        for task in self._link_tasks:
            task.cancel()
        for task in [*self._sds_tasks, *filter(None, [self._identity_task])]:
            task.cancel()
        for server in self.servers:
            server.close()
        for manager in self.managers:
            for conn in list(manager.connections):
                conn.abort()
        for cluster in self.clusters.values():
            await cluster.stop()
