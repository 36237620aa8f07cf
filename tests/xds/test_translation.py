"""Translation of Kubernetes/Istio documents into Istio-shaped Envoy config and Tulle's
agent resources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from control.xds.agent import agent_resources
from control.xds.config import MeshConfig
from control.xds.mesh import MeshDocumentError, MeshDocuments, MeshSnapshot
from control.xds.node_identity import NodeIdentity, NodeKind
from control.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TULLE_ADMIN_NETWORK_POLICY,
    TULLE_NAMESPACE,
    TULLE_NODE,
    TULLE_POD,
    TULLE_SERVICE,
    Resource,
)
from control.xds.sidecar import ProxyProfile, TranslationMemo, proxy_resources

HOST = "reviews.shop.svc.cluster.local"


def docs(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"kind": "Namespace", "metadata": {"name": "shop"}},
        {"kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.1.5", "selector": {"app": "reviews"},
                  "ports": [{"name": "http-web", "port": 9080, "targetPort": "web"}, {"name": "tcp-db", "port": 5432}]}},
        {"kind": "Pod", "metadata": {"name": "reviews-v1", "namespace": "shop", "labels": {"app": "reviews", "version": "v1"}},
         "spec": {"nodeName": "n1", "containers": [{"name": "app", "ports": [{"name": "web", "containerPort": 8080}]}]},
         "status": {"podIP": "10.244.1.4"}},
        {"kind": "Pod", "metadata": {"name": "reviews-v2", "namespace": "shop", "labels": {"app": "reviews", "version": "v2"}},
         "spec": {"nodeName": "n2"}, "status": {"podIP": "10.244.2.7"}},
        {"kind": "Endpoints", "metadata": {"name": "reviews", "namespace": "shop"},
         "subsets": [{"addresses": [{"ip": "10.244.1.4", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "reviews-v1", "namespace": "shop"}}],
                      "notReadyAddresses": [{"ip": "10.244.2.7", "nodeName": "n2", "targetRef": {"kind": "Pod", "name": "reviews-v2", "namespace": "shop"}}],
                      "ports": [{"name": "http-web", "port": 8080}, {"name": "tcp-db", "port": 5432}]}]},
        {"kind": "Node", "metadata": {"name": "n1", "annotations": {"tulle.io/vtep-mac": "02:00:00:00:00:01"}},
         "spec": {"podCIDR": "10.244.1.0/24"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}},
        {"kind": "Node", "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}},
        *extra,
    ]


def build(*extra: dict[str, Any], namespace: str = "", proxyless: bool = False, errors: list[str] | None = None) -> dict[tuple[str, str], Resource]:
    mesh = MeshSnapshot.from_documents(docs(*extra))
    out = proxy_resources(mesh, ProxyProfile(proxyless, namespace, intercept=True), TranslationMemo(), errors)
    return {(r.type_url, r.name): r for r in out}


def msg(resources: dict[tuple[str, str], Resource], type_url: str, name: str) -> Any:
    return resources[(type_url, name)].message


DR: dict[str, Any] = {"kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "shop"},
      "spec": {"host": "reviews",
               "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"},
                                 "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "250ms"},
                                                    "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 20, "maxRetries": 2}},
                                 "outlierDetection": {"consecutive5xxErrors": 4, "interval": "2s", "baseEjectionTime": "1m", "maxEjectionPercent": 50}},
               "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                           {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}]}}


def vs(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "shop"}, "spec": {"hosts": ["reviews"], "http": http}}


# -- node identity -----------------------------------------------------------------------


def test_sidecar_node_id_names_pod_and_namespace() -> None:
    n = NodeIdentity.from_node(base_pb2.Node(id="sidecar~10.244.1.4~reviews-v1.shop~shop.svc.cluster.local"))
    assert (n.kind, n.ip, n.name, n.namespace, n.intercept) == (NodeKind.SIDECAR, "10.244.1.4", "reviews-v1", "shop", True)


def test_node_metadata_selects_proxyless_and_no_interception() -> None:
    meta = struct_pb2.Struct()
    meta.update({"GENERATOR": "grpc", "INTERCEPTION_MODE": "NONE", "NAMESPACE": "shop"})
    n = NodeIdentity.from_node(base_pb2.Node(id="anything", metadata=meta))
    assert (n.kind, n.namespace, n.intercept) == (NodeKind.PROXYLESS, "shop", False)


def test_agent_node_id_names_the_node() -> None:
    n = NodeIdentity.from_node(base_pb2.Node(id="agent~192.168.0.1~n1~cluster.local"))
    assert (n.kind, n.name, n.ip) == (NodeKind.AGENT, "n1", "192.168.0.1")


# -- clusters and endpoints --------------------------------------------------------------


def test_clusters_are_named_as_istio_names_them_and_use_eds_over_ads() -> None:
    c = msg(build(), CLUSTER, f"outbound|9080||{HOST}")
    assert c.type == cluster_pb2.Cluster.EDS
    assert c.eds_cluster_config.service_name == f"outbound|9080||{HOST}"
    assert c.eds_cluster_config.eds_config.HasField("ads")
    assert c.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST  # Istio's default
    assert c.connect_timeout.seconds == 10


def test_assignment_uses_the_endpoint_port_named_like_the_service_port_and_marks_not_ready_unhealthy() -> None:
    cla = msg(build(), ENDPOINT, f"outbound|9080||{HOST}")
    eps = [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value, e.health_status)
           for e in cla.endpoints[0].lb_endpoints]
    assert eps == [("10.244.1.4", 8080, 1), ("10.244.2.7", 8080, 2)]  # HEALTHY, UNHEALTHY


def test_service_without_endpoints_still_gets_an_empty_assignment() -> None:
    extra = {"kind": "Service", "metadata": {"name": "lonely", "namespace": "shop"},
             "spec": {"clusterIP": "10.96.1.9", "ports": [{"name": "http", "port": 80}]}}
    cla = msg(build(extra), ENDPOINT, "outbound|80||lonely.shop.svc.cluster.local")
    assert len(cla.endpoints) == 0


def test_destination_rule_maps_to_lb_policy_circuit_breakers_and_outlier_detection() -> None:
    c = msg(build(DR), CLUSTER, f"outbound|9080||{HOST}")
    assert c.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert c.connect_timeout.nanos == 250_000_000
    t = c.circuit_breakers.thresholds[0]
    assert (t.max_connections.value, t.max_pending_requests.value, t.max_requests.value, t.max_retries.value) == (10, 5, 20, 2)
    od = c.outlier_detection
    assert (od.consecutive_5xx.value, od.enforcing_consecutive_5xx.value, od.interval.seconds, od.base_ejection_time.seconds,
            od.max_ejection_percent.value) == (4, 100, 2, 60, 50)


def test_subsets_get_their_own_clusters_with_overrides_and_label_filtered_endpoints() -> None:
    r = build(DR)
    assert msg(r, CLUSTER, f"outbound|9080|v1|{HOST}").lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    v2 = msg(r, CLUSTER, f"outbound|9080|v2|{HOST}")
    assert v2.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert v2.circuit_breakers.thresholds[0].max_connections.value == 10  # inherited
    cla = msg(r, ENDPOINT, f"outbound|9080|v1|{HOST}")
    assert [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints] == ["10.244.1.4"]


def test_unsupported_load_balancer_is_reported_and_the_service_keeps_defaults() -> None:
    bad = {**DR, "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}}
    errors: list[str] = []
    c = msg(build(bad, errors=errors), CLUSTER, f"outbound|9080||{HOST}")
    assert c.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert errors == [f"DestinationRule shop/reviews: outbound|9080||{HOST}: trafficPolicy.loadBalancer.simple: unsupported 'FASTEST'"]


# -- listeners and routes ----------------------------------------------------------------


def test_http_port_gets_an_unbound_0_0_0_0_listener_with_rds_named_by_port() -> None:
    r = build()
    listener = msg(r, LISTENER, "0.0.0.0_9080")
    assert listener.bind_to_port.value is False
    assert (LISTENER, "virtualOutbound") in r
    assert (ROUTE, "9080") in r


def test_tcp_port_gets_a_vip_listener() -> None:
    listener = msg(build(), LISTENER, "10.96.1.5_5432")
    assert listener.filter_chains[0].filters[0].name == "envoy.filters.network.tcp_proxy"


def test_without_interception_listeners_bind_loopback() -> None:
    mesh = MeshSnapshot.from_documents(docs())
    names = {r.name for r in proxy_resources(mesh, ProxyProfile(False, "", intercept=False), TranslationMemo()) if r.type_url == LISTENER}
    assert names == {"127.0.0.1_9080"}


def test_virtual_host_domains_include_bare_name_only_for_same_namespace_proxies() -> None:
    foreign = msg(build(), ROUTE, "9080").virtual_hosts[0]
    assert foreign.name == f"{HOST}:9080"
    assert set(foreign.domains) == {HOST, f"{HOST}:9080", "reviews.shop.svc", "reviews.shop.svc:9080", "reviews.shop",
                                    "reviews.shop:9080", "10.96.1.5", "10.96.1.5:9080"}
    local = msg(build(namespace="shop"), ROUTE, "9080").virtual_hosts[0]
    assert {"reviews", "reviews:9080"} <= set(local.domains)


def test_default_route_has_istio_default_retries_and_no_timeout() -> None:
    route = msg(build(), ROUTE, "9080").virtual_hosts[0].routes[0]
    assert route.match.prefix == "/"
    assert route.route.cluster == f"outbound|9080||{HOST}"
    assert route.route.retry_policy.num_retries.value == 2
    assert route.route.timeout.seconds == 0


def test_virtual_service_maps_matches_weights_retries_timeout_and_rewrite() -> None:
    rule = {"match": [{"uri": {"prefix": "/api"}, "headers": {"x-user": {"exact": "jason"}}}, {"uri": {"exact": "/v2"}}],
            "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                      {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}],
            "timeout": "1.5s", "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx"},
            "rewrite": {"uri": "/"}}
    routes = msg(build(DR, vs([rule])), ROUTE, "9080").virtual_hosts[0].routes
    assert [r.match.prefix or r.match.path for r in routes] == ["/api", "/v2"]
    assert routes[0].match.headers[0].name == "x-user"
    assert routes[0].match.headers[0].string_match.exact == "jason"
    action = routes[0].route
    assert [(c.name, c.weight.value) for c in action.weighted_clusters.clusters] == [
        (f"outbound|9080|v1|{HOST}", 80), (f"outbound|9080|v2|{HOST}", 20)]
    assert (action.timeout.seconds, action.timeout.nanos) == (1, 500_000_000)
    assert (action.retry_policy.num_retries.value, action.retry_policy.retry_on) == (3, "5xx")
    assert action.retry_policy.per_try_timeout.nanos == 500_000_000
    assert action.prefix_rewrite == "/"


def test_untranslatable_virtual_service_is_reported_and_the_host_keeps_its_default_route() -> None:
    errors: list[str] = []
    bad = vs([{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "reviews"}}]}])
    routes = msg(build(bad, errors=errors), ROUTE, "9080").virtual_hosts[0].routes
    assert [r.name for r in routes] == ["default"]
    assert errors and "spec.http[0].match[0].uri.regex" in errors[0]


def test_virtual_service_bound_only_to_a_gateway_does_not_apply_to_sidecars() -> None:
    gw = vs([{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}])
    gw["spec"]["gateways"] = ["shop-gateway"]
    assert [r.name for r in msg(build(gw), ROUTE, "9080").virtual_hosts[0].routes] == ["default"]


def test_proxyless_clients_get_api_listeners_named_like_their_targets() -> None:
    r = build(proxyless=True)
    listener = msg(r, LISTENER, f"{HOST}:9080")
    assert listener.HasField("api_listener")
    assert (LISTENER, "reviews.shop:9080") in r
    assert (ROUTE, "9080") not in r


def test_unknown_node_gets_outbound_config_for_every_service() -> None:
    config = MeshConfig(MeshSnapshot.from_documents(docs()), TranslationMemo(), 1)
    rs = config.resources_for(NodeIdentity.from_node(base_pb2.Node(id="who-knows")))
    assert f"outbound|9080||{HOST}" in rs.get(CLUSTER)
    assert "9080" in rs.get(ROUTE)


def test_unchanged_services_reuse_their_serialized_resources() -> None:
    memo = TranslationMemo()
    profile = ProxyProfile(False, "", True)
    first = {r.name: r for r in proxy_resources(MeshSnapshot.from_documents(docs()), profile, memo) if r.type_url == CLUSTER}
    memo.next_generation()
    other = {"kind": "Service", "metadata": {"name": "other", "namespace": "shop"}, "spec": {"ports": [{"name": "http", "port": 80}]}}
    second = {r.name: r for r in proxy_resources(MeshSnapshot.from_documents(docs(other)), profile, memo) if r.type_url == CLUSTER}
    assert second[f"outbound|9080||{HOST}"] is first[f"outbound|9080||{HOST}"]


# -- agents and documents ----------------------------------------------------------------


def test_agents_get_every_node_namespace_addressed_pod_and_service() -> None:
    out = agent_resources(MeshSnapshot.from_documents(docs()), "n1", TranslationMemo())
    by = {(r.type_url, r.name): r.message for r in out}
    assert set(by) == {(TULLE_NODE, "n1"), (TULLE_NODE, "n2"), (TULLE_NAMESPACE, "shop"),
                       (TULLE_POD, "shop/reviews-v1"), (TULLE_POD, "shop/reviews-v2"), (TULLE_SERVICE, "shop/reviews")}
    n1 = by[(TULLE_NODE, "n1")]
    assert (n1.underlay_ip, n1.pod_cidr, n1.vtep_mac) == ("192.168.0.1", "10.244.1.0/24", "02:00:00:00:00:01")
    pod = by[(TULLE_POD, "shop/reviews-v1")]
    assert (pod.ip, dict(pod.labels), pod.ports[0].port) == ("10.244.1.4", {"app": "reviews", "version": "v1"}, 8080)


def test_agents_get_every_admin_and_baseline_admin_policy_as_one_type_named_apart() -> None:
    spec = {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
    anp = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
           "metadata": {"name": "default", "resourceVersion": "7"}, "spec": {"priority": 3, **spec}}
    banp = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default", "resourceVersion": "8"}, "spec": spec}
    out = agent_resources(MeshSnapshot.from_documents(docs(anp, banp)), "n1", TranslationMemo())
    by = {r.name: r.message for r in out if r.type_url == TULLE_ADMIN_NETWORK_POLICY}
    assert set(by) == {"default", "baseline/default"}
    assert (by["default"].name, by["default"].baseline, by["default"].resource_version) == ("default", False, "7")
    assert json.loads(by["default"].spec_json)["priority"] == 3
    assert (by["baseline/default"].name, by["baseline/default"].baseline, by["baseline/default"].resource_version) == (
        "default", True, "8")
    assert json.loads(by["baseline/default"].spec_json) == spec


def test_documents_are_kept_current_by_upserts_and_deletes() -> None:
    d = MeshDocuments()
    for doc in docs():
        d.upsert(doc)
    assert HOST in d.snapshot().services
    assert d.delete("Service", "shop", "reviews")
    assert HOST not in d.snapshot().services
    assert not d.upsert({"kind": "ConfigMap", "metadata": {"name": "x"}})


def test_document_missing_a_required_field_names_it() -> None:
    with pytest.raises(MeshDocumentError, match=r"DestinationRule 'r': missing spec.host"):
        MeshSnapshot.from_documents([{"kind": "DestinationRule", "metadata": {"name": "r"}, "spec": {}}])


def test_virtual_service_headers_operations_map_to_route_header_options() -> None:
    rule = {"route": [{"destination": {"host": "reviews"}}],
            "headers": {"request": {"set": {"x-env": "prod"}, "remove": ["x-debug"]}, "response": {"add": {"x-served-by": "tulle"}}}}
    route = msg(build(vs([rule])), ROUTE, "9080").virtual_hosts[0].routes[0]
    assert [(h.header.key, h.header.value) for h in route.request_headers_to_add] == [("x-env", "prod")]
    assert list(route.request_headers_to_remove) == ["x-debug"]
    assert route.response_headers_to_add[0].header.key == "x-served-by"


def test_virtual_service_with_an_unsupported_field_is_reported_not_half_applied() -> None:
    errors: list[str] = []
    rule = {"route": [{"destination": {"host": "reviews", "subset": "v1"}}], "fault": {"abort": {"httpStatus": 500}}}
    routes = msg(build(DR, vs([rule]), errors=errors), ROUTE, "9080").virtual_hosts[0].routes
    assert [r.name for r in routes] == ["default"]
    assert errors == ["VirtualService shop/reviews: spec.http[0].fault: not supported by tulle-control's xDS translation"]


def test_match_on_another_port_does_not_apply_to_this_port() -> None:
    rule = {"match": [{"port": 1234, "uri": {"prefix": "/x"}}, {"uri": {"prefix": "/y"}}], "route": [{"destination": {"host": "reviews"}}]}
    routes = msg(build(vs([rule])), ROUTE, "9080").virtual_hosts[0].routes
    assert [r.match.prefix for r in routes] == ["/y"]


def test_captured_inbound_connections_pass_through_to_their_original_destination() -> None:
    r = build()
    inbound = msg(r, LISTENER, "virtualInbound")
    assert inbound.address.socket_address.port_value == 15006
    assert [f.name for f in inbound.listener_filters] == ["envoy.filters.listener.original_dst"]
    assert msg(r, CLUSTER, "InboundPassthroughCluster").type == cluster_pb2.Cluster.ORIGINAL_DST


def test_consistent_hash_maps_to_ring_hash_and_a_route_hash_policy() -> None:
    dr = {"kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "shop"},
          "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"consistentHash": {
              "httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 2048}}}}}}
    r = build(dr)
    c = msg(r, CLUSTER, f"outbound|9080||{HOST}")
    assert c.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert c.ring_hash_lb_config.minimum_ring_size.value == 2048
    route = msg(r, ROUTE, "9080").virtual_hosts[0].routes[0]
    assert route.route.hash_policy[0].header.header_name == "x-user"


def test_subset_consistent_hash_applies_to_routes_to_that_subset() -> None:
    dr = {**DR, "spec": {**DR["spec"], "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {
        "loadBalancer": {"consistentHash": {"useSourceIp": True}}}}]}}
    rule = {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
    route = msg(build(dr, vs([rule])), ROUTE, "9080").virtual_hosts[0].routes[0]
    assert route.route.hash_policy[0].connection_properties.source_ip
    assert msg(build(dr, vs([rule])), CLUSTER, f"outbound|9080|v1|{HOST}").lb_policy == cluster_pb2.Cluster.RING_HASH
