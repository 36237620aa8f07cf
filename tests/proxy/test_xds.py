"""tulle-proxy driven over ADS (state of the world): CDS, EDS, LDS and RDS from a real gRPC
xDS server, ACKs with versions and nonces, an RDS update applied live, and a NACK naming
the field of an unsupported resource."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
    Resource,
)
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from tests.proxy.running import RecordingUpstream, exchange, free_port
from tests.proxy_process import ProxyProcess

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Records every request; sends whatever the test puts in `outbox`."""

    def __init__(self) -> None:
        self.requests: list[DiscoveryRequest] = []
        self.outbox: queue.Queue[DiscoveryResponse] = queue.Queue()
        self.delta_requests: list[DeltaDiscoveryRequest] = []
        self.delta_outbox: queue.Queue[DeltaDiscoveryResponse] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.nonce = 0

    def StreamAggregatedResources(self, request_iterator: Iterator[DiscoveryRequest],
                                  context: grpc.ServicerContext) -> Iterator[DiscoveryResponse]:
        def read() -> None:
            try:
                for request in request_iterator:
                    self.requests.append(request)
            except grpc.RpcError:
                pass    # the stream ended (the proxy stopped)

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                yield self.outbox.get(timeout=0.05)
            except queue.Empty:
                continue

    def DeltaAggregatedResources(self, request_iterator: Iterator[DeltaDiscoveryRequest],
                                 context: grpc.ServicerContext) -> Iterator[DeltaDiscoveryResponse]:
        def read() -> None:
            try:
                for request in request_iterator:
                    self.delta_requests.append(request)
            except grpc.RpcError:
                pass

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                yield self.delta_outbox.get(timeout=0.05)
            except queue.Empty:
                continue

    def push_delta(self, type_url: str, resources: dict[str, Message], removed: tuple[str, ...] = ()) -> str:
        self.nonce += 1
        items = []
        for name, resource in resources.items():
            item = Resource(name=name, version=f"{name}-{self.nonce}")
            item.resource.Pack(resource)
            items.append(item)
        self.delta_outbox.put(DeltaDiscoveryResponse(type_url=type_url, resources=items,
                                                     removed_resources=list(removed),
                                                     nonce=str(self.nonce)))
        return str(self.nonce)

    def wait_delta(self, predicate: Callable[[DeltaDiscoveryRequest], bool]) -> DeltaDiscoveryRequest:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for request in list(self.delta_requests):
                if predicate(request):
                    return request
            time.sleep(0.02)
        raise AssertionError(f"no such delta request; got {list(self.delta_requests)}")

    def push(self, type_url: str, version: str, resources: list[Message]) -> str:
        self.nonce += 1
        packed = []
        for resource in resources:
            item = Any()
            item.Pack(resource)
            packed.append(item)
        self.outbox.put(DiscoveryResponse(version_info=version, type_url=type_url,
                                          resources=packed, nonce=str(self.nonce)))
        return str(self.nonce)

    def wait_request(self, predicate: Callable[[DiscoveryRequest], bool]) -> DiscoveryRequest:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for request in list(self.requests):
                if predicate(request):
                    return request
            time.sleep(0.02)
        raise AssertionError(f"no such request; got {[(r.type_url, r.version_info, r.response_nonce) for r in self.requests]}")


def message(cls: type[Message], text: str) -> Message:
    parsed = cls()
    json_format.ParseDict(yaml.safe_load(text), parsed)
    return parsed


def listener(port: int) -> Message:
    return message(Listener, f"""
name: ingress
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: ingress
      rds: {{route_config_name: routes, config_source: {{ads: {{}}, resource_api_version: V3}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
""")


def routes(body: str | None) -> Message:
    action = (f"direct_response: {{status: 200, body: {{inline_string: {body}}}}}" if body
              else "route: {cluster: web}")
    return message(RouteConfiguration, f"""
name: routes
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - match: {{prefix: /}}
    {action}
""")


@pytest.fixture
def ads() -> Iterator[AdsServer]:
    server = AdsServer()
    yield server
    server.server.stop(0)


def ads_bootstrap(ads: AdsServer, api_type: str, admin: int = 0) -> str:
    return f"""
node: {{id: sidecar-1, cluster: test}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin or free_port()}}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ads.port}}}}}}}}}]}}]
"""


def test_proxy_configured_and_updated_over_ads(ads: AdsServer, tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    port = free_port()
    admin = free_port()
    process = ProxyProcess("tulle-proxy", yaml.safe_load(ads_bootstrap(ads, "GRPC", admin)), "tulle-xds-",
                           log_path=tmp_path / "proxy.log")
    try:
        first = ads.wait_request(lambda r: r.type_url == CLUSTER)
        assert first.node.id == "sidecar-1"
        ads.wait_request(lambda r: r.type_url == LISTENER)
        nonce = ads.push(CLUSTER, "c1", [message(Cluster, """
name: web
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}
""")])
        ads.wait_request(lambda r: r.type_url == CLUSTER and r.response_nonce == nonce
                         and r.version_info == "c1")
        ads.wait_request(lambda r: r.type_url == ENDPOINTS and list(r.resource_names) == ["web"])
        ads.push(ENDPOINTS, "e1", [message(ClusterLoadAssignment, f"""
cluster_name: web
endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream.port}}}}}}}}}]}}]
""")])
        ads.push(LISTENER, "l1", [listener(port)])
        ads.wait_request(lambda r: r.type_url == ROUTE and list(r.resource_names) == ["routes"])
        nonce = ads.push(ROUTE, "r1", [routes(None)])
        ads.wait_request(lambda r: r.type_url == ROUTE and r.response_nonce == nonce)
        response = exchange(port, b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"ok")
        assert any(request.startswith(b"GET /hello ") for request in upstream.received)

        # a live route update
        nonce = ads.push(ROUTE, "r2", [routes("updated")])
        ads.wait_request(lambda r: r.type_url == ROUTE and r.response_nonce == nonce
                         and r.version_info == "r2")
        response = exchange(port, b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert response.endswith(b"updated")

        # an unsupported field is NACKed with its path; the accepted version stays
        nonce = ads.push(CLUSTER, "c2", [message(Cluster, """
name: web
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}}}
lb_subset_config: {fallback_policy: ANY_ENDPOINT}
""")])
        nack = ads.wait_request(lambda r: r.type_url == CLUSTER and r.response_nonce == nonce)
        assert nack.version_info == "c1"
        assert "Cluster web.lb_subset_config" in nack.error_detail.message
        response = exchange(port, b"GET /still HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert response.endswith(b"updated")

        dump = exchange(admin, b"GET /config_dump HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert b'"name": "web"' in dump and b'"name": "ingress"' in dump and b'"name": "routes"' in dump
    finally:
        process.close()
        upstream.close()


def inline_listener(port: int, body: str) -> Message:
    return message(Listener, f"""
name: ingress
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: ingress
      route_config:
        virtual_hosts:
        - name: all
          domains: ['*']
          routes:
          - {{match: {{path: /direct}}, direct_response: {{status: 200, body: {{inline_string: {body}}}}}}}
          - {{match: {{prefix: /}}, route: {{cluster: web}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
""")


def test_proxy_configured_and_updated_over_delta_ads(ads: AdsServer, tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    port = free_port()
    process = ProxyProcess("tulle-proxy", yaml.safe_load(ads_bootstrap(ads, "DELTA_GRPC")), "tulle-xds-",
                           log_path=tmp_path / "proxy.log")
    try:
        ads.wait_delta(lambda r: r.type_url == CLUSTER)
        ads.wait_delta(lambda r: r.type_url == LISTENER)
        web = message(Cluster, f"""
name: web
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: web
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream.port}}}}}}}}}]}}]
""")
        nonce = ads.push_delta(CLUSTER, {"web": web})
        ack = ads.wait_delta(lambda r: r.type_url == CLUSTER and r.response_nonce == nonce)
        assert not ack.HasField("error_detail")
        nonce = ads.push_delta(LISTENER, {"ingress": inline_listener(port, "one")})
        ads.wait_delta(lambda r: r.type_url == LISTENER and r.response_nonce == nonce)
        assert exchange(port, b"GET /direct HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").endswith(b"one")
        assert exchange(port, b"GET /up HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").endswith(b"ok")

        # an update of one listener, then the removal of the cluster
        nonce = ads.push_delta(LISTENER, {"ingress": inline_listener(port, "two")})
        ads.wait_delta(lambda r: r.type_url == LISTENER and r.response_nonce == nonce)
        assert exchange(port, b"GET /direct HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").endswith(b"two")
        nonce = ads.push_delta(CLUSTER, {}, removed=("web",))
        ads.wait_delta(lambda r: r.type_url == CLUSTER and r.response_nonce == nonce)
        assert exchange(port, b"GET /up HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 503 ")

        # a bad resource is NACKed and changes nothing
        bad = message(Cluster, "{name: web, type: STATIC, connect_timeout: 1s, lb_subset_config: {fallback_policy: ANY_ENDPOINT}}")
        nonce = ads.push_delta(CLUSTER, {"web": bad})
        nack = ads.wait_delta(lambda r: r.type_url == CLUSTER and r.response_nonce == nonce)
        assert "Cluster web.lb_subset_config" in nack.error_detail.message
    finally:
        process.close()
        upstream.close()
