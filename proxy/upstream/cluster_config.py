"""A cluster's configuration, read from Envoy's Cluster message and validated.

Rules: STATIC, STRICT_DNS and LOGICAL_DNS clusters carry their endpoints in
`load_assignment`; EDS clusters get them over xDS (`eds_cluster_config`). `connect_timeout`
defaults to 5 s as in Envoy; `healthy_panic_threshold` to 50 %; STRICT_DNS and LOGICAL_DNS
re-resolve on Envoy's schedule (`dns_refresh_rate`, `respect_dns_ttl`, `dns_jitter`,
`dns_failure_refresh_rate`) with c-ares (the resolver fields): proxy/upstream/dns_config.py
reads those. A LOGICAL_DNS cluster has exactly one endpoint, as Envoy requires. The balancer, circuit breaker, outlier detection and health check messages
are handed to their own parsers (proxy/upstream/...), which reject what they do not
support; so is `upstream_connection_options` (proxy/upstream/tcp_keepalive.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join, non_negative_seconds, seconds
from proxy.tls.transport_socket import TlsConfig, transport_socket_from_proto
from proxy.upstream.balancer import make_balancer
from proxy.upstream.balancer.load_balancing_policy import from_load_balancing_policy
from proxy.upstream.circuit_breaker import CircuitBreakerThresholds
from proxy.upstream.dns_config import dns_refresh_config, resolver_config
from proxy.upstream.dns_refresh import DnsRefreshConfig
from proxy.upstream.dns_resolver import ResolverConfig
from proxy.upstream.health import HealthCheckConfig
from proxy.upstream.host_set import HostSet
from proxy.upstream.outlier import OutlierConfig
from proxy.upstream.tcp_keepalive import TcpKeepalive, upstream_connection_options

_TYPES = {Cluster.STATIC: "STATIC", Cluster.STRICT_DNS: "STRICT_DNS", Cluster.EDS: "EDS",
          Cluster.LOGICAL_DNS: "LOGICAL_DNS", Cluster.ORIGINAL_DST: "ORIGINAL_DST"}
_LB_POLICIES = {Cluster.ROUND_ROBIN: "ROUND_ROBIN", Cluster.LEAST_REQUEST: "LEAST_REQUEST",
                Cluster.RANDOM: "RANDOM", Cluster.RING_HASH: "RING_HASH", Cluster.MAGLEV: "MAGLEV"}


_LB_CONFIG_FIELDS = {"LEAST_REQUEST": "least_request_lb_config", "ROUND_ROBIN": "round_robin_lb_config",
                     "RING_HASH": "ring_hash_lb_config", "MAGLEV": "maglev_lb_config"}


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    address: str
    port: int
    weight: int = 1
    priority: int = 0
    hostname: str = ""
    locality: str = ""
    locality_weight: int = 0
    health_failed: bool = False       # EDS health_status UNHEALTHY, DRAINING or TIMEOUT
    health_check_port: int | None = None
    socket_match: tuple[tuple[str, str], ...] = ()  # filter_metadata["envoy.transport_socket_match"]
    pipe: bool = False                              # `address` is a unix socket path


@dataclass(frozen=True, slots=True)
class SocketMatch:
    """One of a cluster's transport_socket_matches."""

    name: str
    match: tuple[tuple[str, str], ...]
    tls: TlsConfig | None

    def matches(self, metadata: tuple[tuple[str, str], ...]) -> bool:
        return set(self.match) <= set(metadata)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    type: str
    lb_policy: str
    connect_timeout: float
    endpoints: tuple[EndpointConfig, ...]
    panic_threshold: float = 50.0
    dns_refresh: DnsRefreshConfig = field(default_factory=DnsRefreshConfig)
    dns_family: str = "AUTO"
    dns_resolver: ResolverConfig = field(default_factory=ResolverConfig)
    max_requests_per_connection: int = 0      # 0: unlimited
    max_response_headers_bytes: int = 60 * 1024   # HttpProtocolOptions' max_response_headers_kb
    max_stream_duration: float = 0.0   # HttpProtocolOptions' common max_stream_duration (0: none)
    buffer_limit: int | None = None           # per_connection_buffer_limit_bytes (None: default)
    stat_name: str = ""                      # alt_stat_name, else the name
    http2: bool = False                      # only allowed for the xDS server's cluster
    thresholds: CircuitBreakerThresholds = field(default_factory=CircuitBreakerThresholds)
    outlier: OutlierConfig | None = None
    health_checks: tuple[HealthCheckConfig, ...] = ()
    lb_config: object | None = None  # the policy's sub-message, for make_balancer
    lb_config_path: str | None = None
    locality_weighted: bool = False
    transport_socket: TlsConfig | None = None            # None: plaintext (raw_buffer)
    socket_matches: tuple[SocketMatch, ...] = ()
    tcp_keepalive: TcpKeepalive | None = None   # upstream_connection_options.tcp_keepalive
    proto: Cluster | None = None

    @classmethod
    def from_proto(cls, message: Cluster, path: str) -> ClusterConfig:
        reject_unsupported(message, path, (
            "name", "type", "connect_timeout", "lb_policy", "load_assignment", "circuit_breakers",
            "outlier_detection", "health_checks", "common_lb_config", "ring_hash_lb_config",
            "maglev_lb_config", "least_request_lb_config", "round_robin_lb_config",
            "dns_lookup_family", "dns_refresh_rate", "respect_dns_ttl", "dns_jitter", "dns_failure_refresh_rate",
            "typed_dns_resolver_config", "dns_resolution_config", "dns_resolvers", "use_tcp_for_dns_lookups",
            "eds_cluster_config",
            "max_requests_per_connection", "metadata", "alt_stat_name", "per_connection_buffer_limit_bytes",
            "http2_protocol_options", "typed_extension_protocol_options", "load_balancing_policy",
            "transport_socket", "transport_socket_matches", "upstream_connection_options"))
        if not message.name:
            raise ConfigError(join(path, "name"), "must not be empty")
        kind = _TYPES.get(message.type)
        if kind is None:
            raise ConfigError(join(path, "type"), f"{Cluster.DiscoveryType.Name(message.type)} "
                              "is not supported (STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST)")
        policy = _LB_POLICIES.get(message.lb_policy)
        if kind == "ORIGINAL_DST" or message.lb_policy == Cluster.CLUSTER_PROVIDED:
            # The host is each connection's original destination: no balancer picks it.
            if kind != "ORIGINAL_DST" or message.lb_policy not in (Cluster.CLUSTER_PROVIDED, Cluster.ROUND_ROBIN):
                raise ConfigError(join(path, "lb_policy"), "ORIGINAL_DST clusters take CLUSTER_PROVIDED, "
                                  "and only they do")
            if message.HasField("load_assignment"):
                raise ConfigError(join(path, "load_assignment"), "an ORIGINAL_DST cluster has no endpoints")
            policy = "ROUND_ROBIN"
        if policy is None:
            raise ConfigError(join(path, "lb_policy"),
                              f"{Cluster.LbPolicy.Name(message.lb_policy)} is not supported")
        panic = 50.0
        locality_weighted = False
        if message.HasField("common_lb_config"):
            common = message.common_lb_config
            here = join(path, "common_lb_config")
            reject_unsupported(common, here, ("healthy_panic_threshold", "locality_weighted_lb_config"))
            if common.HasField("healthy_panic_threshold"):
                panic = common.healthy_panic_threshold.value
                if not 0.0 <= panic <= 100.0:
                    raise ConfigError(join(here, "healthy_panic_threshold.value"), f"must be within 0..100, got {panic}")
                panic = float(round(panic))   # Envoy keeps whole percents
            if common.HasField("locality_weighted_lb_config"):
                reject_unsupported(common.locality_weighted_lb_config,
                                   join(here, "locality_weighted_lb_config"), ())
                locality_weighted = True
        family = Cluster.DnsLookupFamily.Name(message.dns_lookup_family)
        if message.HasField("eds_cluster_config"):
            reject_unsupported(message.eds_cluster_config, join(path, "eds_cluster_config"),
                               ("eds_config", "service_name"))
        health_checks = HealthCheckConfig.from_cluster(message.health_checks, join(path, "health_checks"))
        lb_field = _LB_CONFIG_FIELDS.get(policy)
        for other in _LB_CONFIG_FIELDS.values():
            if other != lb_field and message.HasField(other):
                raise ConfigError(join(path, other), f"does not apply to lb_policy {policy}")
        lb_config = getattr(message, lb_field) if lb_field and message.HasField(lb_field) else None
        lb_config_path: str | None = None
        if message.HasField("load_balancing_policy"):
            # The typed extension list takes precedence over lb_policy, as in Envoy.
            chosen = from_load_balancing_policy(message.load_balancing_policy,
                                                join(path, "load_balancing_policy"))
            policy, lb_config, lb_config_path = chosen.policy, chosen.config, chosen.config_path
        try:
            # Building a balancer over no hosts validates its config (errors name the field).
            make_balancer(policy, HostSet(()), lb_config, random.Random(0), config_path=lb_config_path)
        except ConfigError as error:
            raise (error if lb_config_path else error.under(path)) from None
        thresholds = CircuitBreakerThresholds.from_proto(
            message.circuit_breakers if message.HasField("circuit_breakers") else None, 0,
            join(path, "circuit_breakers"))
        outlier = (OutlierConfig.from_proto(message.outlier_detection, join(path, "outlier_detection"))
                   if message.HasField("outlier_detection") else None)
        endpoints = _endpoints(message, join(path, "load_assignment"), kind)
        http = _http_protocol_options(message, path)
        if kind == "LOGICAL_DNS" and (len(message.load_assignment.endpoints) != 1 or len(endpoints) != 1):
            raise ConfigError(join(path, "load_assignment"), "a LOGICAL_DNS cluster must have a single "
                              "locality_lb_endpoint and a single lb_endpoint")
        if kind == "EDS" and message.HasField("load_assignment"):
            raise ConfigError(join(path, "load_assignment"), "an EDS cluster gets its endpoints over xDS")
        return cls(
            name=message.name,
            type=kind,
            lb_policy=policy,
            connect_timeout=seconds(message.connect_timeout) if message.HasField("connect_timeout") else 5.0,
            endpoints=endpoints,
            panic_threshold=panic,
            dns_refresh=dns_refresh_config(message, path),
            dns_family=family,
            dns_resolver=resolver_config(message, path),
            max_requests_per_connection=http.max_requests_per_connection,
            max_response_headers_bytes=http.max_response_headers_bytes,
            max_stream_duration=http.max_stream_duration,
            buffer_limit=(message.per_connection_buffer_limit_bytes.value or None
                          if message.HasField("per_connection_buffer_limit_bytes") else None),
            stat_name=message.alt_stat_name or message.name,
            http2=http.http2,
            thresholds=thresholds,
            outlier=outlier,
            health_checks=health_checks,
            lb_config=lb_config,
            lb_config_path=lb_config_path,
            locality_weighted=locality_weighted,
            transport_socket=(transport_socket_from_proto(message.transport_socket, join(path, "transport_socket"),
                                                          server_side=False)
                              if message.HasField("transport_socket") else None),
            socket_matches=_socket_matches(message, path),
            tcp_keepalive=(upstream_connection_options(message.upstream_connection_options,
                                                       join(path, "upstream_connection_options"))
                           if message.HasField("upstream_connection_options") else None),
            proto=message,
        )


def _socket_matches(message: Cluster, path: str) -> tuple[SocketMatch, ...]:
    """transport_socket_matches: the first whose `match` is a subset of an endpoint's
    `envoy.transport_socket_match` metadata gives that endpoint's transport socket."""
    matches = []
    for index, entry in enumerate(message.transport_socket_matches):
        here = f"{path}.transport_socket_matches[{index}]"
        reject_unsupported(entry, here, ("name", "match", "transport_socket"))
        tls = (transport_socket_from_proto(entry.transport_socket, join(here, "transport_socket"),
                                           server_side=False)
               if entry.HasField("transport_socket") else None)
        matches.append(SocketMatch(entry.name, _metadata_pairs(entry.match), tls))
    return tuple(matches)


def _metadata_pairs(struct: object) -> tuple[tuple[str, str], ...]:
    """A protobuf Struct's top-level scalar values as sorted (key, text) pairs."""
    from google.protobuf.json_format import MessageToDict
    from google.protobuf.message import Message

    assert isinstance(struct, Message)
    return tuple(sorted((key, str(value)) for key, value in MessageToDict(struct).items()))


_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True, slots=True)
class _HttpOptions:
    http2: bool = False
    max_requests_per_connection: int = 0
    max_response_headers_bytes: int = 60 * 1024
    max_stream_duration: float = 0.0


def _http_protocol_options(message: Cluster, path: str) -> _HttpOptions:
    """The upstream HTTP options: whether the cluster asks for HTTP/2 (gRPC to an xDS
    server), the requests a connection carries before it is closed (the cluster's
    deprecated max_requests_per_connection, or common_http_protocol_options', never both,
    as in Envoy), the response headers' size limit (max_response_headers_kb) and how long
    an upstream request may last (max_stream_duration, from the attempt's start: before the
    response head, 504 "upstream max stream duration reached", 408 while the request is
    still arriving, retried as a reset is; after it, the body is cut
    (proxy/http/response_timers.py); flag UMSDR, upstream_rq_max_duration_reached)."""
    legacy_max_requests = message.HasField("max_requests_per_connection")
    http2 = message.HasField("http2_protocol_options")
    options = _HttpOptions(http2, message.max_requests_per_connection.value)
    for key, packed in message.typed_extension_protocol_options.items():
        here = f"{path}.typed_extension_protocol_options[{key}]"
        if not packed.type_url.endswith(_HTTP_OPTIONS):
            raise ConfigError(here, f"{packed.type_url} is not supported")
        from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions

        parsed = HttpProtocolOptions()
        packed.Unpack(parsed)
        reject_unsupported(parsed, here, ("explicit_http_config", "common_http_protocol_options"))
        explicit = parsed.explicit_http_config
        reject_unsupported(explicit, join(here, "explicit_http_config"),
                           ("http2_protocol_options", "http_protocol_options"))
        max_requests = options.max_requests_per_connection
        header_bytes = options.max_response_headers_bytes
        stream_duration = options.max_stream_duration
        if parsed.HasField("common_http_protocol_options"):
            common = parsed.common_http_protocol_options
            there = join(here, "common_http_protocol_options")
            reject_unsupported(common, there, ("max_requests_per_connection", "max_response_headers_kb",
                                               "max_stream_duration"))
            if common.HasField("max_requests_per_connection"):
                if legacy_max_requests:
                    raise ConfigError(join(there, "max_requests_per_connection"),
                                      f"{join(path, 'max_requests_per_connection')} is set too; "
                                      "only one of them can be")
                max_requests = common.max_requests_per_connection.value
            if common.HasField("max_response_headers_kb"):
                kb = common.max_response_headers_kb.value
                if not 0 < kb <= 8192:
                    raise ConfigError(join(there, "max_response_headers_kb"), f"must be within 1..8192, got {kb}")
                header_bytes = kb * 1024
            common_duration = non_negative_seconds(common, "max_stream_duration", there)
            if common_duration is not None:
                stream_duration = common_duration
        options = _HttpOptions(http2 or explicit.HasField("http2_protocol_options"), max_requests, header_bytes,
                               stream_duration)
    return options


def _endpoints(message: Cluster, path: str, kind: str) -> tuple[EndpointConfig, ...]:
    assignment = message.load_assignment
    reject_unsupported(assignment, path, ("cluster_name", "endpoints", "policy"))
    endpoints: list[EndpointConfig] = []
    for index, locality in enumerate(assignment.endpoints):
        here = f"{path}.endpoints[{index}]"
        endpoints.extend(locality_endpoints(locality, here, kind))
    return tuple(endpoints)


def locality_endpoints(locality: object, path: str, kind: str) -> list[EndpointConfig]:
    """The endpoints of one LocalityLbEndpoints, with its priority, name and weight."""
    from envoy.config.endpoint.v3.endpoint_components_pb2 import LocalityLbEndpoints

    assert isinstance(locality, LocalityLbEndpoints)
    reject_unsupported(locality, path, ("lb_endpoints", "priority", "locality", "load_balancing_weight"))
    name = "/".join((locality.locality.region, locality.locality.zone, locality.locality.sub_zone))
    weight = locality.load_balancing_weight.value if locality.HasField("load_balancing_weight") else 0
    return [endpoint_config(lb_endpoint, f"{path}.lb_endpoints[{position}]", locality.priority,
                            kind, name, weight)
            for position, lb_endpoint in enumerate(locality.lb_endpoints)]


_FAILED_HEALTH = frozenset((2, 3, 4))   # UNHEALTHY, DRAINING, TIMEOUT


def endpoint_config(lb_endpoint: object, path: str, priority: int, kind: str,
                    locality: str = "", locality_weight: int = 0) -> EndpointConfig:
    from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint

    assert isinstance(lb_endpoint, LbEndpoint)
    reject_unsupported(lb_endpoint, path, ("endpoint", "load_balancing_weight", "health_status",
                                           "metadata"))
    endpoint = lb_endpoint.endpoint
    reject_unsupported(endpoint, join(path, "endpoint"), ("address", "hostname", "health_check_config"))
    hc_port = None
    if endpoint.HasField("health_check_config"):
        here = join(path, "endpoint.health_check_config")
        reject_unsupported(endpoint.health_check_config, here, ("port_value",))
        hc_port = endpoint.health_check_config.port_value or None
    reject_unsupported(endpoint.address, join(path, "endpoint.address"), ("socket_address", "pipe"))
    if endpoint.address.HasField("pipe"):
        # A unix socket: the node agent's SDS server, reached over gRPC only.
        here = join(path, "endpoint.address.pipe")
        reject_unsupported(endpoint.address.pipe, here, ("path", "mode"))
        if not endpoint.address.pipe.path:
            raise ConfigError(join(here, "path"), "must not be empty")
        return EndpointConfig(address=endpoint.address.pipe.path, port=0, priority=priority, pipe=True)
    socket_address = endpoint.address.socket_address
    here = join(path, "endpoint.address.socket_address")
    reject_unsupported(socket_address, here, ("address", "port_value", "protocol"))
    if socket_address.protocol != 0:
        raise ConfigError(join(here, "protocol"), "only TCP is supported")
    if not socket_address.address:
        raise ConfigError(join(here, "address"), "must not be empty")
    if kind == "STATIC":
        import ipaddress

        try:
            ipaddress.ip_address(socket_address.address)
        except ValueError:
            raise ConfigError(join(here, "address"),
                              f"{socket_address.address!r} is not an IP address (a STATIC cluster "
                              "needs IPs; use STRICT_DNS for names)") from None
    weight = lb_endpoint.load_balancing_weight.value if lb_endpoint.HasField("load_balancing_weight") else 1
    if weight < 1:
        raise ConfigError(join(path, "load_balancing_weight"), "must be >= 1")
    socket_match: tuple[tuple[str, str], ...] = ()
    if lb_endpoint.HasField("metadata"):
        here = join(path, "metadata")
        reject_unsupported(lb_endpoint.metadata, here, ("filter_metadata", "typed_filter_metadata"))
        for key in lb_endpoint.metadata.filter_metadata:
            if key == "envoy.transport_socket_match":
                socket_match = _metadata_pairs(lb_endpoint.metadata.filter_metadata[key])
    return EndpointConfig(address=socket_address.address, port=socket_address.port_value,
                          weight=weight, priority=priority,
                          hostname=endpoint.hostname or socket_address.address,
                          locality=locality, locality_weight=locality_weight,
                          health_failed=lb_endpoint.health_status in _FAILED_HEALTH,
                          health_check_port=hc_port, socket_match=socket_match)
