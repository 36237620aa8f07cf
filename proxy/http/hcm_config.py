"""The HTTP connection manager's configuration (Envoy's HttpConnectionManager message).

Rules: the router HTTP filter, last (as in Envoy), after any RBAC filters (proxy/rbac.py);
x-forwarded-client-cert is removed (SANITIZE, Envoy's default) or set from the verified
client certificate (SANITIZE_SET, proxy/tls/peer_certificate.py);
the route configuration is inline (`route_config`) — RDS comes with dynamic resources; the
codec is HTTP/1.1 (`AUTO` and `HTTP1` accepted). Defaults are Envoy's: server name
"envoy", request ids generated, 60 KiB of request headers, 100 headers, 1 h connection idle
timeout, 5 min stream idle timeout, nothing internal unless `internal_address_config` lists it; 100-continue is
answered by the proxy itself (Envoy's default). Slowloris guards (proxy/http/request_timeouts.py):
`request_headers_timeout` (from a request's first byte to its last header byte) and
`request_timeout` (from its first byte until it is fully received or answered) end the request
with 408 and close the connection; off (0) by default, as in Envoy. Draining
(proxy/http/connection_drain.py): `common_http_protocol_options.max_connection_duration` and
the idle timeout start a connection's drain — responses get `connection: close`, and
`drain_timeout` (default 5 s) later the connection closes once no request is in flight;
`delayed_close_timeout` is how long a connection the proxy closes waits for the client's own
close (unset: 1 s, Envoy's default; 0 closes at once). `headers_with_underscores_action`:
ALLOW (default), REJECT_REQUEST (400, the connection closes) or DROP_HEADER. The stream
idle timeout (route `idle_timeout`, else `stream_idle_timeout`, 5 min by default) bounds
each attempt's wait for the upstream's response head: 504 "stream timeout" (408 while the
request is still arriving; `downstream_rq_idle_timeout`), restarted by request body bytes as
Envoy's is; once the response head is out, it bounds the gaps between response body
chunks, and the body is cut (proxy/http/response_timers.py).
`common_http_protocol_options.max_stream_duration` bounds each request from its arrival as a
route's `max_stream_duration` does (proxy/http/stream_duration.py), unless the route sets its
own.
`upgrade_configs` enable upgrades by type (websocket, CONNECT, any
name; custom upgrade filter chains are rejected); the tunnels are proxy/http/tunnel.py's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.core.v3.protocol_pb2 import HttpProtocolOptions
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from google.protobuf.message import Message

from proxy.access_log import AccessLogConfig
from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join, non_negative_seconds
from proxy.rbac import RBAC_HTTP_TYPE, RbacConfig
from proxy.router.route_table import RouteTable

ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HcmConfig:
    stat_prefix: str
    route_table: RouteTable | None      # None: routes come over RDS (`rds_name`)
    rds_name: str = ""
    server_name: str = "envoy"
    server_header: str = "OVERWRITE"          # | APPEND_IF_ABSENT | PASS_THROUGH
    use_remote_address: bool = False
    skip_xff_append: bool = False
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    internal_networks: tuple[IpNetwork, ...] = ()
    max_request_headers_bytes: int = 60 * 1024
    max_headers_count: int = 100
    idle_timeout: float = 3600.0
    stream_idle_timeout: float = 300.0
    upgrades: frozenset[str] = frozenset()
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    suppress_envoy_headers: bool = False
    access_logs: tuple[AccessLogConfig, ...] = ()
    rbac: tuple[RbacConfig, ...] = ()          # RBAC HTTP filters before the router, in order
    forward_client_cert: str = "SANITIZE"      # | SANITIZE_SET
    client_cert_uri: bool = False              # set_current_client_cert_details.uri
    request_headers_timeout: float = 0.0       # 0: off
    request_timeout: float = 0.0               # 0: off
    max_connection_duration: float = 0.0       # 0: off
    max_stream_duration: float = 0.0           # 0: off; a route's max_stream_duration replaces it
    drain_timeout: float = 5.0
    delayed_close_timeout: float = 1.0         # Envoy's default; 0: close at once
    headers_with_underscores: str = "ALLOW"    # | REJECT_REQUEST | DROP_HEADER

    @classmethod
    def from_proto(cls, message: HttpConnectionManager, path: str) -> HcmConfig:
        reject_unsupported(message, path, (
            "codec_type", "stat_prefix", "route_config", "http_filters", "server_name",
            "server_header_transformation", "use_remote_address", "skip_xff_append",
            "xff_num_trusted_hops", "generate_request_id", "preserve_external_request_id",
            "always_set_request_id_in_response", "internal_address_config", "max_request_headers_kb",
            "common_http_protocol_options", "http_protocol_options", "upgrade_configs",
            "normalize_path", "merge_slashes", "access_log", "rds", "stream_idle_timeout",
            "forward_client_cert_details", "set_current_client_cert_details",
            "request_headers_timeout", "request_timeout", "drain_timeout", "delayed_close_timeout"))
        if message.codec_type not in (HttpConnectionManager.AUTO, HttpConnectionManager.HTTP1):
            raise ConfigError(join(path, "codec_type"), "only HTTP/1.1 is supported")
        if not message.stat_prefix:
            raise ConfigError(join(path, "stat_prefix"), "must not be empty")
        rds_name = ""
        if message.HasField("rds"):
            here = join(path, "rds")
            reject_unsupported(message.rds, here, ("config_source", "route_config_name"))
            source = message.rds.config_source
            reject_unsupported(source, join(here, "config_source"), ("ads", "resource_api_version"))
            if not source.HasField("ads"):
                raise ConfigError(join(here, "config_source"), "only ads is supported")
            if not message.rds.route_config_name:
                raise ConfigError(join(here, "route_config_name"), "must not be empty")
            rds_name = message.rds.route_config_name
        elif not message.HasField("route_config"):
            raise ConfigError(path, "one of route_config or rds is required")
        if message.xff_num_trusted_hops:
            raise ConfigError(join(path, "xff_num_trusted_hops"), "only 0 is supported")
        suppress, rbac = _check_filters(message, join(path, "http_filters"))
        forward = HttpConnectionManager.ForwardClientCertDetails.Name(message.forward_client_cert_details)
        if forward not in ("SANITIZE", "SANITIZE_SET"):
            raise ConfigError(join(path, "forward_client_cert_details"),
                              f"{forward} is not supported (SANITIZE, SANITIZE_SET)")
        client_cert_uri = False
        if message.HasField("set_current_client_cert_details"):
            here = join(path, "set_current_client_cert_details")
            reject_unsupported(message.set_current_client_cert_details, here, ("uri",))
            client_cert_uri = message.set_current_client_cert_details.uri
        internal: list[IpNetwork] = []
        if message.HasField("internal_address_config"):
            here = join(path, "internal_address_config")
            reject_unsupported(message.internal_address_config, here, ("cidr_ranges",))
            for index, cidr in enumerate(message.internal_address_config.cidr_ranges):
                try:
                    internal.append(ipaddress.ip_network(
                        f"{cidr.address_prefix}/{cidr.prefix_len.value}", strict=False))
                except ValueError as error:
                    raise ConfigError(f"{here}.cidr_ranges[{index}]", str(error)) from None
        idle_timeout, max_headers, max_duration, underscores = 3600.0, 100, 0.0, "ALLOW"
        max_stream_duration = 0.0
        if message.HasField("common_http_protocol_options"):
            common = message.common_http_protocol_options
            here = join(path, "common_http_protocol_options")
            reject_unsupported(common, here, ("idle_timeout", "max_headers_count", "max_connection_duration",
                                              "max_stream_duration", "headers_with_underscores_action"))
            if common.HasField("idle_timeout"):
                idle_timeout = _duration(common, "idle_timeout", here, 0.0)
            if common.HasField("max_headers_count"):
                max_headers = common.max_headers_count.value
                if max_headers < 1:
                    raise ConfigError(join(here, "max_headers_count"), "must be at least 1")
            max_duration = _duration(common, "max_connection_duration", here, 0.0)
            max_stream_duration = _duration(common, "max_stream_duration", here, 0.0)
            underscores = HttpProtocolOptions.HeadersWithUnderscoresAction.Name(
                common.headers_with_underscores_action)
        accept_10, default_host = False, ""
        if message.HasField("http_protocol_options"):
            http1 = message.http_protocol_options
            here = join(path, "http_protocol_options")
            reject_unsupported(http1, here, ("accept_http_10", "default_host_for_http_10"))
            accept_10, default_host = http1.accept_http_10, http1.default_host_for_http_10
        upgrades = set()
        for index, upgrade in enumerate(message.upgrade_configs):
            here = f"{path}.upgrade_configs[{index}]"
            reject_unsupported(upgrade, here, ("upgrade_type", "enabled"))
            if not upgrade.HasField("enabled") or upgrade.enabled.value:
                upgrades.add(upgrade.upgrade_type.lower())
        if message.normalize_path.value or message.merge_slashes:
            field = "normalize_path" if message.normalize_path.value else "merge_slashes"
            raise ConfigError(join(path, field), "path normalization is not supported")
        table = (RouteTable.from_proto(message.route_config, join(path, "route_config"))
                 if message.HasField("route_config") else None)
        kb = message.max_request_headers_kb.value if message.HasField("max_request_headers_kb") else 60
        return cls(
            stat_prefix=message.stat_prefix,
            route_table=table,
            rds_name=rds_name,
            server_name=message.server_name or "envoy",
            server_header=HttpConnectionManager.ServerHeaderTransformation.Name(
                message.server_header_transformation),
            use_remote_address=message.use_remote_address.value,
            skip_xff_append=message.skip_xff_append,
            generate_request_id=(message.generate_request_id.value
                                 if message.HasField("generate_request_id") else True),
            preserve_external_request_id=message.preserve_external_request_id,
            always_set_request_id_in_response=message.always_set_request_id_in_response,
            internal_networks=tuple(internal),
            max_request_headers_bytes=kb * 1024,
            max_headers_count=max_headers,
            idle_timeout=idle_timeout,
            stream_idle_timeout=_duration(message, "stream_idle_timeout", path, 300.0),
            upgrades=frozenset(upgrades),
            accept_http_10=accept_10,
            default_host_for_http_10=default_host,
            suppress_envoy_headers=suppress,
            rbac=rbac,
            forward_client_cert=forward,
            client_cert_uri=client_cert_uri,
            access_logs=tuple(AccessLogConfig.from_proto(log, f"{path}.access_log[{index}]")
                              for index, log in enumerate(message.access_log)),
            request_headers_timeout=_duration(message, "request_headers_timeout", path, 0.0),
            request_timeout=_duration(message, "request_timeout", path, 0.0),
            max_connection_duration=max_duration,
            max_stream_duration=max_stream_duration,
            drain_timeout=_duration(message, "drain_timeout", path, 5.0),
            delayed_close_timeout=_duration(message, "delayed_close_timeout", path, 1.0),
            headers_with_underscores=underscores,
        )


def _duration(message: Message, name: str, path: str, default: float) -> float:
    """A non-negative Duration field in seconds, `default` when unset."""
    value = non_negative_seconds(message, name, path)
    return default if value is None else value


def _check_filters(message: HttpConnectionManager, path: str) -> tuple[bool, tuple[RbacConfig, ...]]:
    """The filter chain: RBAC filters, then the router last; returns the router's
    suppress_envoy_headers and the RBAC filters."""
    filters = message.http_filters
    if not filters:
        raise ConfigError(path, "the router filter (envoy.filters.http.router) is required")
    rbac = []
    for index, http_filter in enumerate(filters):
        here = f"{path}[{index}]"
        reject_unsupported(http_filter, here, ("name", "typed_config"))
        type_url = http_filter.typed_config.type_url
        if type_url == RBAC_HTTP_TYPE and index != len(filters) - 1:
            rbac.append(RbacConfig.http_from_any(http_filter.typed_config, join(here, "typed_config")))
            continue
        is_router = type_url == ROUTER_TYPE or (
            not type_url and http_filter.name == "envoy.filters.http.router")
        if not is_router:
            raise ConfigError(here, f"HTTP filter {http_filter.name!r} is not supported "
                              "(envoy.filters.http.rbac, envoy.filters.http.router)")
        if index != len(filters) - 1:
            raise ConfigError(here, "the router must be the last HTTP filter")
    router = Router()
    last = filters[-1]
    if last.HasField("typed_config"):
        last.typed_config.Unpack(router)
    here = f"{path}[{len(filters) - 1}].typed_config"
    reject_unsupported(router, here, ("suppress_envoy_headers", "start_child_span", "dynamic_stats"))
    return router.suppress_envoy_headers, tuple(rbac)
