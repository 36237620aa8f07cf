"""The bootstrap file → Bootstrap proto → BootstrapConfig (frozen), or a ConfigError.

Rules: the file is YAML (JSON is YAML) parsed by PyYAML and mapped onto
envoy.config.bootstrap.v3.Bootstrap with protobuf's json_format (unknown field names and
wrong types are errors there, with the field named); then every message is walked by its
converter, which rejects any set field tulle-proxy does not implement, by path. Listener
names and cluster names must be unique, and every cluster a route or tcp_proxy names must
exist (Envoy's `validate_clusters` behaviour for static routes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2  # noqa: F401

# Importing the extension modules registers their types for Any unpacking in ParseDict.
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from proxy.config_error import ConfigError, reject_unsupported
from proxy.listener import ListenerConfig, SocketAddress
from proxy.upstream.cluster_config import ClusterConfig
from proxy.upstream.health.check_name import put_names, take_names
from proxy.xds.config import AdsConfig


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    listeners: tuple[ListenerConfig, ...]
    clusters: tuple[ClusterConfig, ...]
    admin: SocketAddress | None
    node_id: str = ""
    node_cluster: str = ""
    ads: AdsConfig | None = None
    proto: Bootstrap | None = None


def load_bootstrap(path: str) -> BootstrapConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError("config-path", f"cannot read {path}: {error.strerror}") from None
    return parse_bootstrap(text)


def parse_bootstrap(text: str) -> BootstrapConfig:
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError("bootstrap", f"not valid YAML/JSON: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError("bootstrap", "must be a mapping")
    message = Bootstrap()
    names = take_names(document)   # HealthCheck.name: newer than the protos (check_name.py)
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        raise ConfigError("bootstrap", str(error)) from None
    put_names(message.static_resources.clusters, names)
    return from_proto(message)


def from_proto(message: Bootstrap) -> BootstrapConfig:
    reject_unsupported(message, "", ("node", "static_resources", "admin", "layered_runtime",
                                     "dynamic_resources"))
    if message.HasField("layered_runtime") and message.layered_runtime.layers:
        for index, layer in enumerate(message.layered_runtime.layers):
            if layer.WhichOneof("layer_specifier") not in ("static_layer", "admin_layer"):
                raise ConfigError(f"layered_runtime.layers[{index}]",
                                  "only static and admin runtime layers are supported")
            if layer.HasField("static_layer") and layer.static_layer.fields:
                raise ConfigError(f"layered_runtime.layers[{index}].static_layer",
                                  "runtime overrides are not supported")
    node_id = node_cluster = ""
    if message.HasField("node"):
        reject_unsupported(message.node, "node", ("id", "cluster", "metadata", "locality"))
        node_id, node_cluster = message.node.id, message.node.cluster
    admin = None
    if message.HasField("admin"):
        reject_unsupported(message.admin, "admin", ("address", "access_log_path", "access_log"))
        if message.admin.access_log_path not in ("", "/dev/null"):
            raise ConfigError("admin.access_log_path", "an admin access log is not supported")
        if message.admin.access_log:
            raise ConfigError("admin.access_log", "an admin access log is not supported")
        if message.admin.HasField("address"):
            admin = SocketAddress.from_proto(message.admin.address, "admin.address")
    resources = message.static_resources
    reject_unsupported(resources, "static_resources", ("listeners", "clusters"))
    clusters = tuple(ClusterConfig.from_proto(cluster, f"static_resources.clusters[{index}]")
                     for index, cluster in enumerate(resources.clusters))
    ads = (AdsConfig.from_proto(message.dynamic_resources, "dynamic_resources")
           if message.HasField("dynamic_resources") else None)
    listeners = tuple(ListenerConfig.from_proto(listener, f"static_resources.listeners[{index}]")
                      for index, listener in enumerate(resources.listeners))
    names: set[str] = set()
    # HTTP/2 clusters serve gRPC (ADS, SDS: the agent's socket may be named only over CDS
    # or LDS later); tulle-proxy does not route HTTP requests over HTTP/2.
    routed = set().union(*(listener.clusters() for listener in listeners))
    for index, cluster in enumerate(clusters):
        if cluster.http2 and cluster.name in routed:
            raise ConfigError(f"static_resources.clusters[{index}]",
                              "HTTP/2 upstreams are supported only for gRPC services (ADS, SDS), not routes")
        if cluster.name in names:
            raise ConfigError(f"static_resources.clusters[{index}].name",
                              f"duplicate cluster name {cluster.name!r}")
        if cluster.type == "EDS" and ads is None:
            raise ConfigError(f"static_resources.clusters[{index}].type",
                              "EDS needs dynamic_resources.ads_config")
        names.add(cluster.name)
    seen: set[str] = set()
    for index, listener in enumerate(listeners):
        path = f"static_resources.listeners[{index}]"
        if listener.name in seen:
            raise ConfigError(f"{path}.name", f"duplicate listener name {listener.name!r}")
        seen.add(listener.name)
        if ads is None or not ads.cds:
            for cluster_name in sorted(listener.clusters() - names):
                raise ConfigError(path, f"refers to unknown cluster {cluster_name!r}")
        if listener.rds_names() and ads is None:
            raise ConfigError(path, "rds needs dynamic_resources.ads_config")
    if ads is not None and ads.cluster not in names:
        raise ConfigError("dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                          f"unknown cluster {ads.cluster!r}")
    return BootstrapConfig(listeners=listeners, clusters=clusters, admin=admin,
                           node_id=node_id, node_cluster=node_cluster, ads=ads, proto=message)

