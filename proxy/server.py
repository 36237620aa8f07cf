"""The running proxy: clusters, listeners and admin composed from a BootstrapConfig.

Theory of operation: clusters start first (STRICT_DNS clusters resolve before any listener
accepts, as Envoy initialises clusters before listeners), then every listener binds, then
the admin listener. Each HTTP listener gets its own connection manager (its stats under
`http.STAT_PREFIX`), each tcp_proxy listener its filter (`tcp.STAT_PREFIX`); clusters are
shared. `stop()` closes the listeners and every connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket

from proxy.admin.endpoints import AdminState
from proxy.admin.server import AdminConnection
from proxy.bootstrap import BootstrapConfig
from proxy.http.connection_manager import HttpConnectionManager
from proxy.http.downstream import DownstreamConnection
from proxy.local_address import first_non_loopback_ipv4
from proxy.stats import StatsStore
from proxy.tcp_proxy import TcpProxyFilter
from proxy.upstream.cluster import Cluster

log = logging.getLogger("tulle.proxy")


class ProxyServer:
    def __init__(self, config: BootstrapConfig, reuse_port: bool = False,
                 rng: random.Random | None = None, admin: bool = True) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.serve_admin = admin
        self.rng = rng or random.Random()
        self.stats = StatsStore()
        self.clusters: dict[str, Cluster] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.managers: list[HttpConnectionManager] = []
        self.stopped = asyncio.Event()
        self.admin_state = AdminState(config, self.stats, self.clusters, quit=self.stopped.set)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for cluster_config in self.config.clusters:
            cluster = Cluster(cluster_config, self.rng)
            self.clusters[cluster.name] = cluster
            self.stats.register("cluster", cluster_config.stat_name, cluster.stats,
                                cluster.extra_stats)
        await asyncio.gather(*(cluster.start() for cluster in self.clusters.values()))
        local_address = first_non_loopback_ipv4()
        for listener in self.config.listeners:
            factory: object
            if listener.http is not None:
                manager = HttpConnectionManager(listener.http, self.clusters, self.rng, local_address)
                self.managers.append(manager)
                self.stats.register("http", listener.http.stat_prefix, manager.stats)
                factory = lambda manager=manager: DownstreamConnection(manager)  # noqa: E731
            else:
                assert listener.tcp is not None
                tcp = TcpProxyFilter(listener.tcp, self.clusters, self.rng)
                self.stats.register("tcp", listener.tcp.stat_prefix, tcp.stats)
                factory = tcp.protocol
            server = await loop.create_server(
                factory, listener.address.address, listener.address.port,
                reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024)
            self.servers.append(server)
            log.info("listener %s on %s:%s", listener.name, listener.address.address,
                     listener.address.port)
        admin = self.config.admin
        if admin is not None and self.serve_admin:
            server = await loop.create_server(lambda: AdminConnection(self.admin_state),
                                              admin.address, admin.port, reuse_address=True,
                                              reuse_port=self.reuse_port or None)
            self.servers.append(server)

    def bound_ports(self) -> list[int]:
        ports = []
        for server in self.servers:
            for sock in server.sockets:  # type: ignore[attr-defined]
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    ports.append(sock.getsockname()[1])
        return ports

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for manager in self.managers:
            for conn in list(manager.connections):
                conn.abort()
        for cluster in self.clusters.values():
            await cluster.stop()
