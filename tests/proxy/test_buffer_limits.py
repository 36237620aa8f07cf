"""per_connection_buffer_limit_bytes (Istio sets 32 KiB on every listener and cluster): the
listener's bounds what a client connection may have unsent, the cluster's an upstream one.
That large bodies still pass under them, as through Envoy: tests/proxy/scenarios/own-buffer-limits."""

from __future__ import annotations

import asyncio
from typing import cast

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener

from proxy.http.client import UpstreamConnection
from proxy.listener import ListenerConfig
from proxy.upstream.cluster_config import ClusterConfig
from tests.proxy.test_xds import message

LISTENER = """
name: main
address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy,
                   stat_prefix: t, cluster: a}
"""

CLUSTER = """
name: a
connect_timeout: 1s
load_assignment: {cluster_name: a, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
  {address: 127.0.0.1, port_value: 9}}}}]}]}
"""


def test_a_listener_and_a_cluster_take_their_buffer_limits() -> None:
    listener = ListenerConfig.from_proto(message(Listener, LISTENER + "per_connection_buffer_limit_bytes: 32768\n"),
                                         "listener")
    cluster = ClusterConfig.from_proto(message(Cluster, CLUSTER + "per_connection_buffer_limit_bytes: 32768\n"), "c")
    assert (listener.buffer_limit, cluster.buffer_limit) == (32768, 32768)


def test_without_a_limit_each_connection_keeps_its_default() -> None:
    listener = ListenerConfig.from_proto(message(Listener, LISTENER), "listener")
    cluster = ClusterConfig.from_proto(message(Cluster, CLUSTER), "c")
    assert (listener.buffer_limit, cluster.buffer_limit) == (None, None)


class _Owner:
    def __init__(self, buffer_limit: int | None) -> None:
        self.buffer_limit = buffer_limit
        self.max_response_headers_bytes = 60 * 1024

    def connection_closed(self, connection: UpstreamConnection) -> None:
        pass


class _Transport:
    """What an upstream connection asks of its transport when it is made."""

    def __init__(self) -> None:
        self.high: int | None = None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high


def test_an_upstream_connection_pauses_its_writer_at_the_clusters_limit() -> None:
    limited, default = _Transport(), _Transport()
    UpstreamConnection(_Owner(32768)).connection_made(cast(asyncio.BaseTransport, limited))
    UpstreamConnection(_Owner(None)).connection_made(cast(asyncio.BaseTransport, default))
    assert (limited.high, default.high) == (32768, None)
