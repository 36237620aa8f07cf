"""Translation of the mesh model into Envoy config for one proxy, shaped as Istio shapes it.

What a proxy gets (outbound only; Istio operators will recognise every name):
- Clusters `outbound|<port>||<svc>.<ns>.svc.cluster.local` per service port, and one per
  DestinationRule subset `outbound|<port>|<subset>|<host>`: EDS over ADS, lb_policy,
  circuit_breakers and outlier_detection from the DestinationRule (subset and port-level
  settings override the rule's own, field by field, as in Istio). Istio's defaults hold
  where the rule is silent: LEAST_REQUEST, 10 s connect timeout, thresholds at 2^32-1.
  Plus `PassthroughCluster` (original destination) and `BlackHoleCluster`.
- A ClusterLoadAssignment per cluster, always (an empty one when there are no
  endpoints, so Envoy never waits for it): the Endpoints addresses on the port whose name
  matches the service port, ready ones HEALTHY and not-ready ones UNHEALTHY; a subset's
  assignment keeps the endpoints whose pod carries the subset's labels.
- HTTP ports: listener `0.0.0.0_<port>` (not bound; the 15001 `virtualOutbound` listener
  hands it captured connections by original destination) with HTTP connection manager and
  RDS route config `<port>`, whose virtual hosts are `<host>:<port>` with domains for the
  FQDN, `<svc>.<ns>`, `<svc>.<ns>.svc`, the VIP, each with and without `:<port>`, and the
  bare `<svc>` for proxies of the same namespace (bare names are not unique across
  namespaces, and Envoy rejects duplicate domains). Plus Istio's `allow_any` host.
  TCP ports: listener `<vip>_<port>` with tcp_proxy to the service cluster.
- Inbound: Istio's `virtualInbound` on 15006 (where capture redirects connections
  arriving for the pod). For a proxy whose pod is known, per-port filter chains
  terminate mTLS by PeerAuthentication mode and enforce AuthorizationPolicy (see
  `inbound`); for an unknown proxy, plain passthrough via `InboundPassthroughCluster`.
- Auto mTLS (Istio's): a cluster whose endpoints include pods with a sidecar gets
  `transport_socket_matches` — `tlsMode-istio` (UpstreamTlsContext, SDS secrets, the
  service accounts' SPIFFE IDs as `match_typed_subject_alt_names`, see `tls`) for
  endpoints whose metadata `envoy.transport_socket_match` says `tlsMode: istio`, and
  `tlsMode-disabled` (plaintext) for the others, and for ports under DISABLE.
- A DestinationRule's `trafficPolicy.tls` (per port and subset, as Istio merges them)
  replaces auto mTLS on its clusters: DISABLE is plaintext to every endpoint,
  ISTIO_MUTUAL is mTLS with the mesh's certificates to every endpoint (verified against
  `subjectAltNames`, else the SPIFFE IDs of the service's meshed pods), SIMPLE and
  MUTUAL originate TLS with files on the proxy's host (`tls.origination_socket`).
  Proxyless gRPC clusters carry no TLS.
- Without interception (`INTERCEPTION_MODE: NONE`), outbound listeners bind
  `127.0.0.1_<port>` for real, as Istio does, and there is no capture listener.
- A VirtualService for the host replaces the default route: each http rule becomes one
  route per match (matches are ORed; a match naming another port is skipped), with uri
  exact/prefix/regex, headers, method and query parameters; route destinations become a
  cluster or weighted clusters; timeout, retries (attempts, perTryTimeout, retryOn),
  rewrite (uri, authority) and header operations (request/response set, add, remove)
  carry over. Any other field (fault, mirror, redirect, corsPolicy …) is reported and the
  VirtualService is not applied: never half-applied, never silently ignored.
  With no VirtualService, Istio's default route: prefix `/`, no timeout, 2 retries.
- Proxyless gRPC clients get, instead of listeners bound to ports, an API listener named
  as the client's target (`<host>:<port>`, also `<svc>.<ns>:<port>`) with the same routes
  inline (without Istio's default retries), and the same clusters and assignments, whose
  default balancer is gRPC's ROUND_ROBIN rather than Envoy's LEAST_REQUEST.

Per-service work is memoised on the frozen model values it reads (`TranslationMemo`), so
after one endpoint change only that service's assignment is rebuilt and re-serialized.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from control.xds.authorization import applicable
from control.xds.inbound import Inbound, InboundPort, inbound_resources, served_ports
from control.xds.mesh import (
    DestinationRule,
    Endpoints,
    MeshSnapshot,
    Pod,
    Service,
    ServicePort,
    VirtualService,
    fqdn,
)
from control.xds.peer_authentication import mtls_mode
from control.xds.resources import Resource
from control.xds.tls import origination_socket, upstream_socket

PASSTHROUGH: Final = "PassthroughCluster"
BLACKHOLE: Final = "BlackHoleCluster"
INBOUND_PASSTHROUGH: Final = "InboundPassthroughCluster"
VIRTUAL_OUTBOUND_PORT: Final = 15001
VIRTUAL_INBOUND_PORT: Final = 15006
MAX_THRESHOLD: Final = 2**32 - 1
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# Istio's default retry policy for mesh routes.
DEFAULT_RETRY_ON: Final = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

_LB_POLICIES: Final = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
    "UNSPECIFIED": cluster_pb2.Cluster.LEAST_REQUEST,
}

T = TypeVar("T")


class TranslationError(ValueError):
    """A model value translation cannot express; names the object and field."""


@dataclass(frozen=True, slots=True)
class ProxyProfile:
    """Everything that makes one proxy's config differ from another's."""

    proxyless: bool
    namespace: str  # "" when the proxy matches no known pod
    intercept: bool
    inbound: Inbound | None = None  # the served pod's inbound side; None: plain passthrough


class TranslationMemo:
    """Two-generation memo: values computed for the previous push are reused when their
    key (frozen model values) is unchanged; anything not reused in a push is dropped."""

    def __init__(self) -> None:
        self._previous: dict[Hashable, Any] = {}
        self._current: dict[Hashable, Any] = {}

    def next_generation(self) -> None:
        self._previous, self._current = self._current, {}

    def get(self, key: Hashable, compute: Callable[..., T], *args: Any) -> T:
        """The memoised `compute(*args)`; `key` must capture everything it reads."""
        value = self._current.get(key, _MISSING)
        if value is _MISSING:
            value = self._previous.get(key, _MISSING)
            if value is _MISSING:
                value = compute(*args)
            self._current[key] = value
        return value


_MISSING: Final = object()


def proxy_resources(
    mesh: MeshSnapshot, profile: ProxyProfile, memo: TranslationMemo, errors: list[str] | None = None
) -> list[Resource]:
    """Every Listener, RouteConfiguration, Cluster and ClusterLoadAssignment for a proxy.

    A VirtualService or DestinationRule that cannot be translated is left out (its host
    keeps Istio's defaults) and its error appended to `errors`; one bad object never
    blocks the push of everything else."""
    errors = errors if errors is not None else []
    out: list[Resource] = []
    pl = profile.proxyless
    vs_by_host = _virtual_services_by_host(mesh.virtual_services)
    for svc in mesh.services.values():
        eps = mesh.endpoints.get(svc.hostname)
        dr = mesh.destination_rules.get(svc.hostname)
        labels = _subset_pod_labels(mesh, eps) if dr is not None and dr.subsets else ()
        tls = () if pl else _mtls_peers(mesh, eps)
        try:
            out.extend(memo.get(("clusters", svc, eps, dr, labels, pl, tls), _service_clusters, svc, eps, dr, labels, pl, tls))
        except TranslationError as e:
            errors.append(f"DestinationRule {dr.namespace}/{dr.name}: {e}" if dr else str(e))
            out.extend(memo.get(("clusters", svc, eps, None, (), pl, tls), _service_clusters, svc, eps, None, (), pl, tls))
    out.extend(memo.get("static-clusters", _static_clusters))
    if profile.proxyless:
        for svc in mesh.services.values():
            for port in svc.ports:
                if not port.is_http:
                    continue
                vs = _usable(mesh, vs_by_host.get(svc.hostname), port, errors)
                out.extend(
                    memo.get(
                        ("grpc-listener", svc, port, vs, _destinations(mesh, svc, vs), profile.namespace),
                        _grpc_listeners, mesh, svc, port, vs, profile.namespace,
                    )
                )
        return out
    http_ports: dict[int, list[Service]] = {}
    for svc in mesh.services.values():
        for port in svc.ports:
            if port.is_http:
                http_ports.setdefault(port.port, []).append(svc)
            elif svc.cluster_ip and svc.cluster_ip != "None" and profile.intercept:
                out.append(memo.get(("tcp-listener", svc, port), _tcp_listener, svc, port))
    for port_number, services in sorted(http_ports.items()):
        vhosts, vhost_keys = [], []
        for svc in services:
            port = next(p for p in svc.ports if p.port == port_number)
            vs = _usable(mesh, vs_by_host.get(svc.hostname), port, errors)
            vhost_key = ("vhost", svc, port, vs, _destinations(mesh, svc, vs), profile.namespace)
            vhosts.append(
                memo.get(vhost_key, _virtual_host, mesh, svc, port, vs, profile.namespace, False)
            )
            vhost_keys.append(vhost_key)
        key = ("route", port_number, profile.intercept, tuple(vhost_keys))
        out.append(memo.get(key, _route_config, port_number, vhosts, profile.intercept))
        out.append(memo.get(("http-listener", port_number, profile.intercept), _http_listener, port_number, profile.intercept))
    if profile.intercept:
        out.append(memo.get("virtual-outbound", _virtual_outbound_listener))
        if profile.inbound is None:
            out.extend(memo.get("virtual-inbound", _virtual_inbound))
        else:
            resources, inbound_errors = memo.get(("inbound", profile.inbound), _inbound, profile.inbound)
            out.extend(resources)
            errors.extend(e for e in inbound_errors if e not in errors)
    return out


def workload_inbound(mesh: MeshSnapshot, pod: Pod) -> Inbound:
    """What the inbound side of `pod`'s sidecar depends on: its served ports with their
    mTLS modes, its own mode, and the AuthorizationPolicies that apply to it. Pods alike
    in these share one profile, hence one translation."""
    pas = mesh.peer_authentications
    return Inbound(
        ports=tuple(
            InboundPort(port, http, http2, mtls_mode(pas, pod.namespace, pod.labels, port))
            for port, http, http2 in served_ports(mesh, pod)
        ),
        mode=mtls_mode(pas, pod.namespace, pod.labels, None),
        policies=applicable(mesh.authorization_policies, pod.namespace, pod.labels),
    )


def _inbound(inbound: Inbound) -> tuple[list[Resource], list[str]]:
    errors: list[str] = []
    return inbound_resources(inbound, errors), errors


# (endpoint IP, endpoint port, SPIFFE ID) of each endpoint reached over mTLS.
MtlsPeers = tuple[tuple[str, int, str], ...]


def _mtls_peers(mesh: MeshSnapshot, eps: Endpoints | None) -> MtlsPeers:
    """Istio's auto mTLS: an endpoint is reached over mTLS when its pod has a sidecar
    and its PeerAuthentication for that port is not DISABLE; the others in plaintext."""
    if eps is None:
        return ()
    out = []
    for subset in eps.subsets:
        for a in subset.addresses:
            pod = mesh.pods.get(a.pod) if a.pod else mesh.pods_by_ip.get(a.ip)
            if pod is None or not pod.sidecar:
                continue
            identity = f"spiffe://{mesh.trust_domain}/ns/{pod.namespace}/sa/{pod.service_account}"
            for port in subset.ports:
                if mtls_mode(mesh.peer_authentications, pod.namespace, pod.labels, port.port).accepts_mtls:
                    out.append((a.ip, port.port, identity))
    return tuple(sorted(set(out)))


def _usable(
    mesh: MeshSnapshot, vs: VirtualService | None, port: ServicePort, errors: list[str]
) -> VirtualService | None:
    """`vs` if it translates, else None (the host keeps its default route)."""
    if vs is None:
        return None
    try:
        _vs_routes(mesh, vs, port.port, proxyless=False)
    except TranslationError as e:
        errors.append(str(e))
        return None
    return vs


def _destinations(
    mesh: MeshSnapshot, svc: Service, vs: VirtualService | None
) -> tuple[tuple[Service | None, DestinationRule | None], ...]:
    """What a virtual host's routes read besides the VirtualService: the services routed
    to (their ports name the clusters) and their DestinationRules (hash policies)."""
    hosts = {svc.hostname}
    if vs is not None:
        hosts.update(
            fqdn(str((d.get("destination") or {}).get("host", "")), vs.namespace)
            for rule in vs.http
            for d in rule.get("route") or ()
        )
    return tuple((mesh.services.get(h), mesh.destination_rules.get(h)) for h in sorted(hosts))


def cluster_name(port: int, subset: str, host: str) -> str:
    return f"outbound|{port}|{subset}|{host}"


# -- clusters and endpoints ----------------------------------------------------------


def _service_clusters(
    svc: Service, eps: Endpoints | None, dr: DestinationRule | None, pod_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
, proxyless: bool, tls: MtlsPeers = ()) -> list[Resource]:
    out: list[Resource] = []
    labels_of = dict(pod_labels)
    for port in svc.ports:
        policy = _merged_policy(dr.traffic_policy if dr else None, port.port)
        endpoints = _lb_endpoints(svc, port, eps, tls)
        name = cluster_name(port.port, "", svc.hostname)
        out.append(Resource(name, _with_client_tls(_cluster(name, port, policy, proxyless), port, endpoints, tls,
                                                   policy.get("tls"), svc.hostname, proxyless)))
        out.append(Resource(name, _assignment(name, [e for e, _ in endpoints])))
        for subset in dr.subsets if dr else ():
            subset_name = str(subset.get("name", ""))
            want = dict(subset.get("labels") or {})
            sub_policy = _merged_policy(_overlay(policy, subset.get("trafficPolicy")), port.port)
            sname = cluster_name(port.port, subset_name, svc.hostname)
            chosen = [
                e for e, pod in endpoints if all(dict(labels_of.get(pod, ())).get(k) == v for k, v in want.items())
            ]
            out.append(Resource(sname, _with_client_tls(_cluster(sname, port, sub_policy, proxyless), port, endpoints, tls,
                                                         sub_policy.get("tls"), svc.hostname, proxyless)))
            out.append(Resource(sname, _assignment(sname, chosen)))
    return out


TRANSPORT_SOCKET_MATCH: Final = "envoy.transport_socket_match"


def _with_client_tls(
    cluster: cluster_pb2.Cluster, port: ServicePort, endpoints: list[tuple[endpoint_components_pb2.LbEndpoint, str]],
    tls: MtlsPeers, settings: Mapping[str, Any] | None, host: str, proxyless: bool,
) -> cluster_pb2.Cluster:
    """The cluster's upstream TLS: auto mTLS, unless its DestinationRule says otherwise."""
    mode = str((settings or {}).get("mode") or "")
    if proxyless or mode == "DISABLE":
        return cluster
    if not mode:
        return _with_auto_mtls(cluster, port, endpoints, tls)
    http2 = _is_http2(port)
    if mode == "ISTIO_MUTUAL":
        reached = _reached(endpoints)
        sans = list((settings or {}).get("subjectAltNames") or ()) or sorted(
            {identity for ip, p, identity in tls if (ip, p) in reached})
        sni = str((settings or {}).get("sni") or _istio_sni(cluster.name, port))
        cluster.transport_socket.CopyFrom(upstream_socket(sans, sni, http2))
    else:
        cluster.transport_socket.CopyFrom(origination_socket(settings or {}, host, http2))
    return cluster


def _reached(endpoints: list[tuple[endpoint_components_pb2.LbEndpoint, str]]) -> set[tuple[str, int]]:
    return {(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
            for e, _ in endpoints}


def _istio_sni(cluster_name: str, port: ServicePort) -> str:
    _, _, subset, host = cluster_name.split("|")
    return f"outbound_.{port.port}_.{subset}_.{host}"


def _is_http2(port: ServicePort) -> bool:
    return (port.app_protocol or port.name.split("-", 1)[0]).lower() in ("http2", "grpc", "h2c")


def _with_auto_mtls(
    cluster: cluster_pb2.Cluster, port: ServicePort, endpoints: list[tuple[endpoint_components_pb2.LbEndpoint, str]],
    tls: MtlsPeers,
) -> cluster_pb2.Cluster:
    """Istio's auto mTLS on a cluster: endpoints labelled `tlsMode: istio` (pods with a
    sidecar) are reached over mTLS, verified against the SPIFFE IDs of the service's
    meshed pods; the others in plaintext (`tlsMode-disabled`)."""
    reached = _reached(endpoints)
    sans = sorted({identity for ip, p, identity in tls if (ip, p) in reached})
    if not sans:
        return cluster
    istio = cluster.transport_socket_matches.add(
        name="tlsMode-istio", transport_socket=upstream_socket(sans, _istio_sni(cluster.name, port), _is_http2(port)))
    istio.match.update({"tlsMode": "istio"})
    plain = cluster.transport_socket_matches.add(name="tlsMode-disabled")
    plain.transport_socket.name = "envoy.transport_sockets.raw_buffer"
    plain.transport_socket.typed_config.Pack(raw_buffer_pb2.RawBuffer())
    return cluster


def _subset_pod_labels(mesh: MeshSnapshot, eps: Endpoints | None) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """Labels of the pods behind `eps`, keyed by endpoint IP (what subsets select on)."""
    if eps is None:
        return ()
    out = []
    for subset in eps.subsets:
        for a in subset.addresses:
            pod = mesh.pods.get(a.pod) if a.pod else mesh.pods_by_ip.get(a.ip)
            out.append((a.ip, pod.labels if pod else ()))
    return tuple(sorted(set(out)))


def _lb_endpoints(
    svc: Service, port: ServicePort, eps: Endpoints | None, tls: MtlsPeers = ()
) -> list[tuple[endpoint_components_pb2.LbEndpoint, str]]:
    if eps is None:
        return []
    meshed = {(ip, p) for ip, p, _ in tls}
    out = []
    for subset in eps.subsets:
        target = next(
            (p.port for p in subset.ports if p.name == port.name or (len(subset.ports) == 1 and not port.name)),
            None,
        )
        if target is None:
            continue
        for a in subset.addresses:
            out.append(
                (
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=_address(a.ip, target)),
                        health_status=health_check_pb2.HEALTHY if a.ready else health_check_pb2.UNHEALTHY,
                        load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
                    ),
                    a.ip,
                )
            )
            if (a.ip, target) in meshed:
                out[-1][0].metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update({"tlsMode": "istio"})
    out.sort(key=lambda e: (e[1], e[0].endpoint.address.socket_address.port_value))
    return out


def _assignment(name: str, endpoints: list[endpoint_components_pb2.LbEndpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if endpoints:
        # gRPC ignores localities without a weight; Envoy ignores the weight unless
        # locality-weighted balancing is configured.
        group = cla.endpoints.add(lb_endpoints=endpoints, load_balancing_weight=wrappers_pb2.UInt32Value(value=len(endpoints)))
        group.locality.SetInParent()  # gRPC rejects a group without a locality
    return cla


def _cluster(name: str, port: ServicePort, policy: Mapping[str, Any], proxyless: bool) -> cluster_pb2.Cluster:
    lb = policy.get("loadBalancer") or {}
    pool = policy.get("connectionPool") or {}
    tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(service_name=name, eds_config=_ads()),
        connect_timeout=_duration(tcp.get("connectTimeout"), DEFAULT_CONNECT_TIMEOUT, f"{name}: connectTimeout"),
    )
    # gRPC's xDS client balances ROUND_ROBIN by default (and Istio's gRPC generator sends
    # that); Envoy sidecars get Istio's LEAST_REQUEST.
    simple = str(lb.get("simple", "ROUND_ROBIN" if proxyless else "UNSPECIFIED"))
    if "consistentHash" in lb:
        ch = lb["consistentHash"]
        if "maglev" in ch:
            c.lb_policy = cluster_pb2.Cluster.MAGLEV
            if "tableSize" in ch["maglev"]:
                c.maglev_lb_config.table_size.value = int(ch["maglev"]["tableSize"])
        else:
            c.lb_policy = cluster_pb2.Cluster.RING_HASH
            size = (ch.get("ringHash") or {}).get("minimumRingSize", ch.get("minimumRingSize"))
            if size is not None:
                c.ring_hash_lb_config.minimum_ring_size.value = int(size)
    elif simple in _LB_POLICIES:
        c.lb_policy = _LB_POLICIES[simple]
    else:
        raise TranslationError(f"{name}: trafficPolicy.loadBalancer.simple: unsupported {simple!r}")
    c.circuit_breakers.thresholds.append(
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            max_connections=_u32(tcp.get("maxConnections", MAX_THRESHOLD)),
            max_pending_requests=_u32(http.get("http1MaxPendingRequests", MAX_THRESHOLD)),
            max_requests=_u32(http.get("http2MaxRequests", MAX_THRESHOLD)),
            max_retries=_u32(http.get("maxRetries", MAX_THRESHOLD)),
            track_remaining=True,
        )
    )
    options = http_protocol_options_pb2.HttpProtocolOptions()
    if "maxRequestsPerConnection" in http:
        options.common_http_protocol_options.max_requests_per_connection.value = int(http["maxRequestsPerConnection"])
    if "idleTimeout" in http:
        options.common_http_protocol_options.idle_timeout.CopyFrom(_duration(http["idleTimeout"], 0, f"{name}: idleTimeout"))
    if (port.app_protocol or port.name.split("-", 1)[0]).lower() in ("http2", "grpc", "h2c"):
        options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    else:
        options.explicit_http_config.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
    if port.is_http:
        packed = any_pb2.Any()
        packed.Pack(options)
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(packed)
    od = policy.get("outlierDetection")
    if od:
        c.outlier_detection.CopyFrom(_outlier_detection(od, name))
        if "minHealthPercent" in od:
            c.common_lb_config.healthy_panic_threshold.value = float(od["minHealthPercent"])
    return c


def _outlier_detection(od: Mapping[str, Any], name: str) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection(
        # Istio enforces only what the rule names; every other detector stays off.
        enforcing_consecutive_5xx=_u32(0),
        enforcing_consecutive_gateway_failure=_u32(0),
        enforcing_success_rate=_u32(0),
    )
    five = od.get("consecutive5xxErrors", od.get("consecutiveErrors"))
    if five is not None:
        out.consecutive_5xx.value = int(five)
        out.enforcing_consecutive_5xx.value = 100 if int(five) > 0 else 0
    if "consecutiveGatewayErrors" in od:
        out.consecutive_gateway_failure.value = int(od["consecutiveGatewayErrors"])
        out.enforcing_consecutive_gateway_failure.value = 100
    if "interval" in od:
        out.interval.CopyFrom(_duration(od["interval"], 10, f"{name}: outlierDetection.interval"))
    if "baseEjectionTime" in od:
        out.base_ejection_time.CopyFrom(_duration(od["baseEjectionTime"], 30, f"{name}: outlierDetection.baseEjectionTime"))
    if "maxEjectionPercent" in od:
        out.max_ejection_percent.value = int(od["maxEjectionPercent"])
    return out


def _static_clusters() -> list[Resource]:
    passthrough = cluster_pb2.Cluster(
        name=PASSTHROUGH,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_pb2.Duration(seconds=int(DEFAULT_CONNECT_TIMEOUT)),
    )
    blackhole = cluster_pb2.Cluster(
        name=BLACKHOLE,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=int(DEFAULT_CONNECT_TIMEOUT)),
    )
    return [Resource(PASSTHROUGH, passthrough), Resource(BLACKHOLE, blackhole)]


def _merged_policy(policy: Mapping[str, Any] | None, port: int) -> Mapping[str, Any]:
    """A traffic policy with its portLevelSettings for `port` laid over it."""
    if not policy:
        return {}
    for level in policy.get("portLevelSettings") or ():
        if int((level.get("port") or {}).get("number", -1)) == port:
            return _overlay(policy, level)
    return policy


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not top:
        return base
    merged = dict(base)
    for key in ("loadBalancer", "connectionPool", "outlierDetection", "tls"):
        if key in top:
            merged[key] = top[key]
    return merged


# -- listeners and routes ------------------------------------------------------------


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def _router_filter() -> hcm_pb2.HttpFilter:
    f = hcm_pb2.HttpFilter(name="envoy.filters.http.router")
    f.typed_config.Pack(router_pb2.Router())
    return f


def _http_listener(port: int, intercept: bool) -> Resource:
    ip = "0.0.0.0" if intercept else "127.0.0.1"
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"outbound_{ip}_{port}",
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=str(port)),
        http_filters=[_router_filter()],
    )
    name = f"{ip}_{port}"
    listener = listener_pb2.Listener(
        name=name,
        address=_address(ip, port),
        traffic_direction=base_pb2.OUTBOUND,
        bind_to_port=wrappers_pb2.BoolValue(value=not intercept),
        filter_chains=[listener_components_pb2.FilterChain(filters=[_network_filter("envoy.filters.network.http_connection_manager", manager)])],
    )
    return Resource(name, listener)


def _tcp_listener(svc: Service, port: ServicePort) -> Resource:
    proxy = tcp_proxy_pb2.TcpProxy(
        stat_prefix=cluster_name(port.port, "", svc.hostname), cluster=cluster_name(port.port, "", svc.hostname)
    )
    name = f"{svc.cluster_ip}_{port.port}"
    listener = listener_pb2.Listener(
        name=name,
        address=_address(svc.cluster_ip, port.port),
        traffic_direction=base_pb2.OUTBOUND,
        bind_to_port=wrappers_pb2.BoolValue(value=False),
        filter_chains=[listener_components_pb2.FilterChain(filters=[_network_filter("envoy.filters.network.tcp_proxy", proxy)])],
    )
    return Resource(name, listener)


def _virtual_outbound_listener() -> Resource:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=PASSTHROUGH, cluster=PASSTHROUGH)
    listener = listener_pb2.Listener(
        name="virtualOutbound",
        address=_address("0.0.0.0", VIRTUAL_OUTBOUND_PORT),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        traffic_direction=base_pb2.OUTBOUND,
        default_filter_chain=listener_components_pb2.FilterChain(
            name="virtualOutbound-catchall-tcp", filters=[_network_filter("envoy.filters.network.tcp_proxy", proxy)]
        ),
    )
    return Resource("virtualOutbound", listener)


def _virtual_inbound() -> list[Resource]:
    """Istio's 15006 listener: connections captured on their way into the pod are passed
    to their original destination, the app (plain TCP; mTLS termination comes with
    PeerAuthentication)."""
    cluster = cluster_pb2.Cluster(
        name=INBOUND_PASSTHROUGH,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_pb2.Duration(seconds=int(DEFAULT_CONNECT_TIMEOUT)),
    )
    original_dst = listener_components_pb2.ListenerFilter(name="envoy.filters.listener.original_dst")
    original_dst.typed_config.Pack(original_dst_pb2.OriginalDst())
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=INBOUND_PASSTHROUGH, cluster=INBOUND_PASSTHROUGH)
    listener = listener_pb2.Listener(
        name="virtualInbound",
        address=_address("0.0.0.0", VIRTUAL_INBOUND_PORT),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=[original_dst],
        default_filter_chain=listener_components_pb2.FilterChain(
            name="virtualInbound-catchall-tcp", filters=[_network_filter("envoy.filters.network.tcp_proxy", proxy)]
        ),
    )
    return [Resource(INBOUND_PASSTHROUGH, cluster), Resource("virtualInbound", listener)]


def _network_filter(name: str, config: Any) -> listener_components_pb2.Filter:
    f = listener_components_pb2.Filter(name=name)
    f.typed_config.Pack(config)
    return f


def _route_config(port: int, vhosts: list[route_components_pb2.VirtualHost], intercept: bool) -> Resource:
    rc = route_pb2.RouteConfiguration(name=str(port), virtual_hosts=vhosts, validate_clusters=wrappers_pb2.BoolValue(value=False))
    if intercept:
        # Istio's outboundTrafficPolicy ALLOW_ANY: unknown hosts pass through.
        rc.virtual_hosts.add(
            name="allow_any",
            domains=["*"],
            routes=[
                route_components_pb2.Route(
                    name="allow_any",
                    match=route_components_pb2.RouteMatch(prefix="/"),
                    route=route_components_pb2.RouteAction(cluster=PASSTHROUGH, timeout=duration_pb2.Duration()),
                )
            ],
        )
    return Resource(str(port), rc)


def _domains(svc: Service, port: int, proxy_namespace: str) -> list[str]:
    names = [svc.hostname, f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}"]
    if proxy_namespace == svc.namespace:
        names.append(svc.name)
    if svc.cluster_ip and svc.cluster_ip != "None":
        names.append(svc.cluster_ip)
    return [d for n in names for d in (n, f"{n}:{port}")]


def _virtual_host(
    mesh: MeshSnapshot,
    svc: Service,
    port: ServicePort,
    vs: VirtualService | None,
    proxy_namespace: str,
    proxyless: bool,
) -> route_components_pb2.VirtualHost:
    routes = (
        _vs_routes(mesh, vs, port.port, proxyless)
        if vs is not None
        else [
            _default_route(
                cluster_name(port.port, "", svc.hostname),
                proxyless,
                _hash_policies(mesh, svc.hostname, port.port, "", f"Service {svc.namespace}/{svc.name}"),
            )
        ]
    )
    return route_components_pb2.VirtualHost(
        name=f"{svc.hostname}:{port.port}", domains=_domains(svc, port.port, proxy_namespace), routes=routes
    )


def _default_route(
    cluster: str, proxyless: bool, hash_policies: list[route_components_pb2.RouteAction.HashPolicy]
) -> route_components_pb2.Route:
    action = route_components_pb2.RouteAction(cluster=cluster, hash_policy=hash_policies)
    if not proxyless:
        action.timeout.CopyFrom(duration_pb2.Duration())
        action.retry_policy.CopyFrom(_retry_policy({"attempts": 2}))
    return route_components_pb2.Route(name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action)


# What translation carries over from a VirtualService; anything else is reported, and the
# VirtualService is then not applied (never half-applied, never silently ignored).
_HTTP_ROUTE_FIELDS: Final = frozenset({"name", "match", "route", "timeout", "retries", "rewrite", "headers"})
_MATCH_FIELDS: Final = frozenset({"name", "uri", "headers", "method", "queryParams", "ignoreUriCase", "port"})


def _vs_routes(mesh: MeshSnapshot, vs: VirtualService, port: int, proxyless: bool) -> list[route_components_pb2.Route]:
    routes = []
    for i, rule in enumerate(vs.http):
        where = f"VirtualService {vs.namespace}/{vs.name}: spec.http[{i}]"
        _only(rule, _HTTP_ROUTE_FIELDS, where)
        action = _route_action(mesh, vs, rule, port, where, proxyless)
        matches = rule.get("match") or [{}]
        for j, m in enumerate(matches):
            _only(m, _MATCH_FIELDS, f"{where}.match[{j}]")
            if "port" in m and int(m["port"]) != port:
                continue  # this match is for another port of the host
            route = route_components_pb2.Route(
                name=str(rule.get("name") or f"{vs.name}.{i}"), match=_route_match(m, f"{where}.match[{j}]"), route=action
            )
            _header_operations(route, rule.get("headers") or {}, f"{where}.headers")
            routes.append(route)
    return routes


def _only(obj: Mapping[str, Any], supported: frozenset[str], where: str) -> None:
    unsupported = sorted(set(obj) - supported)
    if unsupported:
        raise TranslationError(f"{where}.{unsupported[0]}: not supported by tulle-control's xDS translation")


def _header_operations(route: route_components_pb2.Route, headers: Mapping[str, Any], where: str) -> None:
    """Istio's Headers: request/response set (overwrite), add (append), remove."""
    for direction, adds, removes in (
        ("request", route.request_headers_to_add, route.request_headers_to_remove),
        ("response", route.response_headers_to_add, route.response_headers_to_remove),
    ):
        ops = headers.get(direction) or {}
        _only(ops, frozenset({"set", "add", "remove"}), f"{where}.{direction}")
        for verb, action in (
            ("set", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
            ("add", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
        ):
            for name, value in sorted((ops.get(verb) or {}).items()):
                adds.add(header=base_pb2.HeaderValue(key=name, value=str(value)), append_action=action)
        removes.extend(str(h) for h in ops.get("remove") or ())
    _only(headers, frozenset({"request", "response"}), where)


def _route_match(m: Mapping[str, Any], where: str) -> route_components_pb2.RouteMatch:
    out = route_components_pb2.RouteMatch()
    uri = m.get("uri") or {"prefix": "/"}
    if "exact" in uri:
        out.path = str(uri["exact"])
    elif "prefix" in uri:
        out.prefix = str(uri["prefix"])
    elif "regex" in uri:
        out.safe_regex.CopyFrom(_regex(str(uri["regex"]), f"{where}.uri.regex"))
    else:
        raise TranslationError(f"{where}.uri: needs exact, prefix or regex")
    if m.get("ignoreUriCase"):
        out.case_sensitive.value = False
    for name, sm in sorted((m.get("headers") or {}).items()):
        out.headers.append(route_components_pb2.HeaderMatcher(name=name, string_match=_string_match(sm, f"{where}.headers.{name}")))
    if "method" in m:
        out.headers.append(route_components_pb2.HeaderMatcher(name=":method", string_match=_string_match(m["method"], f"{where}.method")))
    for name, sm in sorted((m.get("queryParams") or {}).items()):
        out.query_parameters.add(name=name, string_match=_string_match(sm, f"{where}.queryParams.{name}"))
    return out


def _string_match(sm: Mapping[str, Any], where: str) -> string_pb2.StringMatcher:
    if "exact" in sm:
        return string_pb2.StringMatcher(exact=str(sm["exact"]))
    if "prefix" in sm:
        return string_pb2.StringMatcher(prefix=str(sm["prefix"]))
    if "regex" in sm:
        return string_pb2.StringMatcher(safe_regex=_regex(str(sm["regex"]), f"{where}.regex"))
    raise TranslationError(f"{where}: needs exact, prefix or regex")


def _regex(pattern: str, where: str) -> regex_pb2.RegexMatcher:
    try:
        re.compile(pattern)
    except re.error as e:
        raise TranslationError(f"{where}: invalid regex {pattern!r}: {e}") from e
    return regex_pb2.RegexMatcher(regex=pattern)


def _route_action(
    mesh: MeshSnapshot, vs: VirtualService, rule: Mapping[str, Any], port: int, where: str, proxyless: bool
) -> route_components_pb2.RouteAction:
    dests = rule.get("route") or ()
    if not dests:
        raise TranslationError(f"{where}.route: at least one destination is required")
    clusters = []
    for k, d in enumerate(dests):
        dest = d.get("destination") or {}
        if "host" not in dest:
            raise TranslationError(f"{where}.route[{k}].destination.host: required")
        host = fqdn(str(dest["host"]), vs.namespace)
        svc = mesh.services.get(host)
        dest_port = (dest.get("port") or {}).get("number")
        if dest_port is None:
            dest_port = svc.ports[0].port if svc is not None and len(svc.ports) == 1 else port
        clusters.append((cluster_name(int(dest_port), str(dest.get("subset", "")), host), int(d.get("weight", 100 if len(dests) == 1 else 0))))
    action = route_components_pb2.RouteAction()
    first = dests[0].get("destination") or {}
    first_port = int(clusters[0][0].split("|")[1])
    action.hash_policy.extend(
        _hash_policies(mesh, fqdn(str(first["host"]), vs.namespace), first_port, str(first.get("subset", "")), where)
    )
    if len(clusters) == 1:
        action.cluster = clusters[0][0]
    else:
        action.weighted_clusters.clusters.extend(
            route_components_pb2.WeightedCluster.ClusterWeight(name=n, weight=wrappers_pb2.UInt32Value(value=w))
            for n, w in clusters
            if w > 0
        )
    if "timeout" in rule:
        action.timeout.CopyFrom(_duration(rule["timeout"], 0, f"{where}.timeout"))
    elif not proxyless:
        action.timeout.CopyFrom(duration_pb2.Duration())
    retries = rule.get("retries")
    if retries is not None:
        if int(retries.get("attempts", 0)) > 0:
            action.retry_policy.CopyFrom(_retry_policy(retries, where))
    elif not proxyless:
        action.retry_policy.CopyFrom(_retry_policy({"attempts": 2}))
    rewrite = rule.get("rewrite") or {}
    if "uri" in rewrite:
        action.prefix_rewrite = str(rewrite["uri"])
    if "authority" in rewrite:
        action.host_rewrite_literal = str(rewrite["authority"])
    return action


def _hash_policies(
    mesh: MeshSnapshot, host: str, port: int, subset: str, where: str
) -> list[route_components_pb2.RouteAction.HashPolicy]:
    """Istio's consistentHash keys of the destination's DestinationRule (subset and port
    settings included), as the route's hash policy; none without consistent hashing."""
    dr = mesh.destination_rules.get(host)
    if dr is None:
        return []
    policy = _merged_policy(dr.traffic_policy, port)
    for sub in dr.subsets:
        if subset and sub.get("name") == subset:
            policy = _merged_policy(_overlay(policy, sub.get("trafficPolicy")), port)
    ch = (policy.get("loadBalancer") or {}).get("consistentHash")
    if not ch:
        return []
    HashPolicy = route_components_pb2.RouteAction.HashPolicy
    if "httpHeaderName" in ch:
        return [HashPolicy(header=HashPolicy.Header(header_name=str(ch["httpHeaderName"])))]
    if "httpCookie" in ch:
        cookie = ch["httpCookie"]
        out = HashPolicy(cookie=HashPolicy.Cookie(name=str(cookie["name"]), path=str(cookie.get("path", ""))))
        if "ttl" in cookie:
            out.cookie.ttl.CopyFrom(_duration(cookie["ttl"], 0, f"{where}: consistentHash.httpCookie.ttl"))
        return [out]
    if ch.get("useSourceIp"):
        return [HashPolicy(connection_properties=HashPolicy.ConnectionProperties(source_ip=True))]
    if "httpQueryParameterName" in ch:
        return [HashPolicy(query_parameter=HashPolicy.QueryParameter(name=str(ch["httpQueryParameterName"])))]
    return []


_PREVIOUS_HOSTS = route_components_pb2.RetryPolicy.RetryHostPredicate(name="envoy.retry_host_predicates.previous_hosts")
_PREVIOUS_HOSTS.typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())


def _retry_policy(retries: Mapping[str, Any], where: str = "") -> route_components_pb2.RetryPolicy:
    policy = route_components_pb2.RetryPolicy(
        retry_on=str(retries.get("retryOn") or DEFAULT_RETRY_ON),
        num_retries=wrappers_pb2.UInt32Value(value=int(retries["attempts"])),
        retry_host_predicate=[_PREVIOUS_HOSTS],
        host_selection_retry_max_attempts=5,
        retriable_status_codes=[503],
    )
    if "perTryTimeout" in retries:
        policy.per_try_timeout.CopyFrom(_duration(retries["perTryTimeout"], 0, f"{where}.retries.perTryTimeout"))
    return policy


def _grpc_listeners(
    mesh: MeshSnapshot, svc: Service, port: ServicePort, vs: VirtualService | None, proxy_namespace: str
) -> list[Resource]:
    vhost = _virtual_host(mesh, svc, port, vs, proxy_namespace, True)
    out = []
    for name in (f"{svc.hostname}:{port.port}", f"{svc.name}.{svc.namespace}:{port.port}"):
        route_config = route_pb2.RouteConfiguration(name=name)
        host = route_config.virtual_hosts.add()
        host.CopyFrom(vhost)
        del host.domains[:]
        host.domains.append("*")
        manager = hcm_pb2.HttpConnectionManager(
            stat_prefix=name, route_config=route_config, http_filters=[_router_filter()]
        )
        api = api_listener_pb2.ApiListener()
        api.api_listener.Pack(manager)
        out.append(Resource(name, listener_pb2.Listener(name=name, api_listener=api)))
    return out


def _virtual_services_by_host(vss: Iterable[VirtualService]) -> dict[str, VirtualService]:
    out: dict[str, VirtualService] = {}
    for vs in vss:
        if vs.applies_to_mesh:
            for host in vs.hosts:
                out.setdefault(host, vs)  # Istio: the first rule for a host wins
    return out


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)$")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _duration(value: Any, default: float, where: str) -> duration_pb2.Duration:
    if value is None:
        seconds = default
    else:
        m = _DURATION.match(str(value).strip())
        if m is None:
            raise TranslationError(f"{where}: invalid duration {value!r} (e.g. 10s, 250ms, 1m)")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def _u32(value: Any) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=int(value))
