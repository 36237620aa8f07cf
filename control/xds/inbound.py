"""A sidecar's inbound side: Istio's `virtualInbound` (15006) with mTLS and RBAC.

Connections captured on their way into the pod arrive at 15006 with their original
destination port; the listener's filter chains are chosen by that port and by what the
TLS inspector saw (`transport_protocol` "tls" or "raw_buffer"):

- For each port the workload serves (its container ports and the target ports of
  the Services selecting it), by the port's PeerAuthentication mode:
  * STRICT: one chain `inbound|<port>|tls` (destination_port, transport_protocol
    "tls") terminating mTLS (DownstreamTlsContext, see `tls`). A plaintext connection
    matches no chain and is closed: there is no default filter chain.
  * PERMISSIVE: that chain plus `inbound|<port>|raw` (transport_protocol "raw_buffer").
  * DISABLE: one chain `inbound|<port>|any` matching the port only; bytes pass as they are.
  HTTP ports run an HTTP connection manager — RBAC (DENY then ALLOW, see
  `authorization`), then the router to `inbound|<port>||`, the app on 127.0.0.1:<port> —
  that sets x-forwarded-client-cert to the peer's URI SAN (SANITIZE_SET: whatever the
  client sent is dropped, so a plaintext peer cannot forge an identity). TCP ports run
  the network RBAC filters, then tcp_proxy to `inbound|<port>||`.
- Ports the workload does not declare pass through to their original destination
  (`InboundPassthroughCluster`) under the workload's own mode, with chains
  `virtualInbound-catchall-tls` / `virtualInbound-catchall-tcp` (no destination_port).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from control.xds.authorization import WorkloadRbac, workload_rbac
from control.xds.mesh import AuthorizationPolicy, MeshSnapshot, Pod
from control.xds.peer_authentication import MtlsMode
from control.xds.resources import Resource
from control.xds.tls import downstream_socket

VIRTUAL_INBOUND_PORT: Final = 15006
INBOUND_PASSTHROUGH: Final = "InboundPassthroughCluster"
APP_ADDRESS: Final = "127.0.0.1"
CONNECT_TIMEOUT: Final = duration_pb2.Duration(seconds=10)


@dataclass(frozen=True, slots=True)
class InboundPort:
    port: int
    http: bool
    http2: bool  # the app speaks HTTP/2 (grpc, http2, h2c)
    mode: MtlsMode


@dataclass(frozen=True, slots=True)
class Inbound:
    """Everything the inbound side of one workload depends on (a memo key)."""

    ports: tuple[InboundPort, ...]
    mode: MtlsMode  # for ports the workload does not declare
    policies: tuple[AuthorizationPolicy, ...]


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


def served_ports(mesh: MeshSnapshot, pod: Pod) -> tuple[tuple[int, bool, bool], ...]:
    """(port, http, http2) for each port the pod serves: its container ports and the
    target ports of the Services selecting it (named target ports resolved); a port is
    HTTP when a Service port targeting it is (Istio's protocol selection)."""
    labels = dict(pod.labels)
    by_name = {p.name: p.port for p in pod.ports if p.name}
    ports: dict[int, tuple[bool, bool]] = {p.port: (False, False) for p in pod.ports if p.protocol == "TCP"}
    for svc in mesh.services.values():
        if svc.namespace != pod.namespace or not svc.selector:
            continue
        if any(labels.get(k) != v for k, v in svc.selector):
            continue
        for sp in svc.ports:
            if sp.protocol != "TCP":
                continue
            target = sp.target_port
            number = by_name.get(target) if isinstance(target, str) and not target.isdigit() else int(target)
            if number is None:
                continue
            proto = (sp.app_protocol or sp.name.split("-", 1)[0]).lower()
            http, http2 = ports.get(number, (False, False))
            ports[number] = (http or sp.is_http, http2 or proto in ("http2", "grpc", "h2c"))
    return tuple((port, http, http2) for port, (http, http2) in sorted(ports.items()))


def inbound_resources(inbound: Inbound, errors: list[str]) -> list[Resource]:
    """The virtualInbound listener and its clusters for one workload."""
    chains: list[listener_components_pb2.FilterChain] = []
    out: list[Resource] = []
    for p in inbound.ports:
        rbac = workload_rbac(inbound.policies, p.http, errors)
        cluster = inbound_cluster_name(p.port)
        out.append(Resource(cluster, _app_cluster(p)))
        for transport in _transports(p.mode):
            filters = _http_filters(p.port, cluster, rbac) if p.http else _tcp_filters(f"inbound|{p.port}", cluster, rbac)
            chains.append(_chain(f"inbound|{p.port}|{transport}", p.port, transport, filters))
    rbac = workload_rbac(inbound.policies, False, errors)
    for transport in _transports(inbound.mode):
        filters = _tcp_filters(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH, rbac)
        name = {"tls": "virtualInbound-catchall-tls", "raw": "virtualInbound-catchall-tcp", "any": "virtualInbound"}
        chains.append(_chain(name[transport], None, transport, filters))
    out.append(Resource(INBOUND_PASSTHROUGH, passthrough_cluster()))
    original_dst = listener_components_pb2.ListenerFilter(name="envoy.filters.listener.original_dst")
    original_dst.typed_config.Pack(original_dst_pb2.OriginalDst())
    inspector = listener_components_pb2.ListenerFilter(name="envoy.filters.listener.tls_inspector")
    inspector.typed_config.Pack(tls_inspector_pb2.TlsInspector())
    listener = listener_pb2.Listener(
        name="virtualInbound",
        address=_address("0.0.0.0", VIRTUAL_INBOUND_PORT),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=[original_dst, inspector],
        # A plaintext client on a TLS-only port must not wait for the inspector's timeout
        # to be refused, nor reach a default chain: there is none.
        continue_on_listener_filters_timeout=False,
        filter_chains=chains,
    )
    out.append(Resource("virtualInbound", listener))
    return out


def passthrough_cluster() -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=INBOUND_PASSTHROUGH,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=CONNECT_TIMEOUT,
    )


def _transports(mode: MtlsMode) -> Iterable[str]:
    if mode is MtlsMode.STRICT:
        return ("tls",)
    if mode is MtlsMode.PERMISSIVE:
        return ("tls", "raw")
    return ("any",)


def _chain(
    name: str, port: int | None, transport: str, filters: list[listener_components_pb2.Filter]
) -> listener_components_pb2.FilterChain:
    match = listener_components_pb2.FilterChainMatch()
    if port is not None:
        match.destination_port.value = port
    if transport == "tls":
        match.transport_protocol = "tls"
    elif transport == "raw":
        match.transport_protocol = "raw_buffer"
    chain = listener_components_pb2.FilterChain(name=name, filter_chain_match=match, filters=filters)
    if transport == "tls":
        chain.transport_socket.CopyFrom(downstream_socket())
    return chain


def _app_cluster(p: InboundPort) -> cluster_pb2.Cluster:
    name = inbound_cluster_name(p.port)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=_address(APP_ADDRESS, p.port)))])],
        ),
    )
    if p.http2:
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        packed = any_pb2.Any()
        packed.Pack(options)
        cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(packed)
    return cluster


def _rbac_names(rbac: WorkloadRbac) -> list[tuple[str, rbac_pb2.RBAC]]:
    return [(kind, rules) for kind, rules in (("deny", rbac.deny), ("allow", rbac.allow)) if rules is not None]


def _http_filters(port: int, cluster: str, rbac: WorkloadRbac) -> list[listener_components_pb2.Filter]:
    http_filters = []
    for _, rules in _rbac_names(rbac):
        f = hcm_pb2.HttpFilter(name="envoy.filters.http.rbac")
        f.typed_config.Pack(http_rbac_pb2.RBAC(rules=rules))
        http_filters.append(f)
    router = hcm_pb2.HttpFilter(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    http_filters.append(router)
    route = route_components_pb2.Route(
        name="default",
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=cluster, timeout=duration_pb2.Duration()),
    )
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"inbound_0.0.0.0_{port}",
        route_config=route_pb2.RouteConfiguration(
            name=f"inbound|{port}", validate_clusters=wrappers_pb2.BoolValue(value=False),
            virtual_hosts=[route_components_pb2.VirtualHost(name=f"inbound|http|{port}", domains=["*"], routes=[route])],
        ),
        http_filters=http_filters,
        forward_client_cert_details=hcm_pb2.HttpConnectionManager.SANITIZE_SET,
        set_current_client_cert_details=hcm_pb2.HttpConnectionManager.SetCurrentClientCertDetails(uri=True),
    )
    return [_filter("envoy.filters.network.http_connection_manager", manager)]


def _tcp_filters(stat_prefix: str, cluster: str, rbac: WorkloadRbac) -> list[listener_components_pb2.Filter]:
    out = [
        _filter("envoy.filters.network.rbac", network_rbac_pb2.RBAC(rules=rules, stat_prefix=f"{kind}_{stat_prefix}"))
        for kind, rules in _rbac_names(rbac)
    ]
    out.append(_filter("envoy.filters.network.tcp_proxy", tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)))
    return out


def _filter(name: str, config: object) -> listener_components_pb2.Filter:
    f = listener_components_pb2.Filter(name=name)
    f.typed_config.Pack(config)
    return f


def _address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))
