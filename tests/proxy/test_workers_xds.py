"""--concurrency N under ADS: one xDS stream for the process, its config in every worker,
admin /stats adding up the workers."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from proxy.stats_text import parse_stats
from tests.proxy.running import RecordingUpstream, exchange, free_port
from tests.proxy.test_xds import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTE,
    AdsServer,
    ads,  # noqa: F401 - the fixture
    ads_bootstrap,
    listener,
    message,
)
from tests.proxy_process import ProxyProcess


class CountingUpstream(RecordingUpstream):
    """Counts its connections: each worker pools its own, so the count is the number of
    workers that forwarded requests."""

    def __init__(self) -> None:
        self.connections = 0
        super().__init__()

    def _connection(self, conn: socket.socket) -> None:
        self.connections += 1
        super()._connection(conn)


def stat(admin: int, name: str) -> int | None:
    response = exchange(admin, b"GET /stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").decode()
    return parse_stats(response.partition("\r\n\r\n")[2]).values.get(name)


def test_workers_share_one_ads_stream_and_all_serve_its_config(ads: AdsServer, tmp_path: Path) -> None:  # noqa: F811
    upstream = CountingUpstream()
    port, admin = free_port(), free_port()
    process = ProxyProcess("tulle-proxy", yaml.safe_load(ads_bootstrap(ads, "GRPC", admin)), "tulle-workers-",
                           log_path=tmp_path / "proxy.log", concurrency=2)
    try:
        ads.wait_request(lambda r: r.type_url == LISTENER)
        ads.push(CLUSTER, "c1", [message(Cluster, """
name: web
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}
""")])
        ads.wait_request(lambda r: r.type_url == ENDPOINTS and list(r.resource_names) == ["web"])
        ads.push(ENDPOINTS, "e1", [message(ClusterLoadAssignment, f"""
cluster_name: web
endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream.port}}}}}}}}}]}}]
""")])
        ads.push(LISTENER, "l1", [listener(port)])
        ads.wait_request(lambda r: r.type_url == ROUTE and list(r.resource_names) == ["routes"])
        nonce = ads.push(ROUTE, "r1", [message(RouteConfiguration, """
name: routes
virtual_hosts: [{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: web}}]}]
""")])
        ads.wait_request(lambda r: r.type_url == ROUTE and r.response_nonce == nonce)
        time.sleep(0.5)   # the follower applies what the leader forwarded

        responses = [exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                     for _ in range(40)]
        assert all(response.startswith(b"HTTP/1.1 200 ") for response in responses)
        assert upstream.connections >= 2   # both workers had the cluster, listener and routes
        streams = [r for r in ads.requests if r.type_url == CLUSTER and not r.response_nonce]
        assert len(streams) == 1

        deadline = time.monotonic() + 5
        while stat(admin, "http.ingress.downstream_rq_total") != 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stat(admin, "http.ingress.downstream_rq_total") == 40
    finally:
        process.close()
        upstream.close()
