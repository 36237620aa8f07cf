"""PeerAuthentication, AuthorizationPolicy and auto mTLS translated into the Istio shape:
virtualInbound filter chains per port and mode, SDS-fed TLS contexts, RBAC filters."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from control.xds.mesh import MeshSnapshot
from control.xds.resources import CLUSTER, ENDPOINT, LISTENER, Resource
from control.xds.sidecar import ProxyProfile, TranslationMemo, proxy_resources, workload_inbound
from tests.xds.harness import ENVOY

SIDECAR = {"sidecar.tulle.io/inject": "true"}


def mesh_docs(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"kind": "Namespace", "metadata": {"name": "shop"}},
        {"kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.1.5", "selector": {"app": "reviews"},
                  "ports": [{"name": "http-web", "port": 9080, "targetPort": 8080}, {"name": "tcp-db", "port": 5432}]}},
        {"kind": "Pod", "metadata": {"name": "reviews-v1", "namespace": "shop", "labels": {"app": "reviews"},
                                     "annotations": SIDECAR},
         "spec": {"nodeName": "n1", "serviceAccountName": "reviews"}, "status": {"podIP": "10.244.1.4"}},
        {"kind": "Pod", "metadata": {"name": "legacy", "namespace": "shop", "labels": {"app": "reviews"}},
         "spec": {"nodeName": "n1"}, "status": {"podIP": "10.244.1.9"}},
        {"kind": "Endpoints", "metadata": {"name": "reviews", "namespace": "shop"},
         "subsets": [{"addresses": [
             {"ip": "10.244.1.4", "targetRef": {"kind": "Pod", "name": "reviews-v1", "namespace": "shop"}},
             {"ip": "10.244.1.9", "targetRef": {"kind": "Pod", "name": "legacy", "namespace": "shop"}}],
             "ports": [{"name": "http-web", "port": 8080}, {"name": "tcp-db", "port": 5432}]}]},
        *extra,
    ]


def pa(name: str, namespace: str, mode: str | None, selector: dict[str, str] | None = None,
       ports: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return {"kind": "PeerAuthentication", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def ap(name: str, action: str, rules: list[dict[str, Any]] | None, namespace: str = "shop") -> dict[str, Any]:
    spec: dict[str, Any] = {"action": action}
    if rules is not None:
        spec["rules"] = rules
    return {"kind": "AuthorizationPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def sidecar_config(*extra: dict[str, Any], errors: list[str] | None = None) -> dict[tuple[str, str], Resource]:
    mesh = MeshSnapshot.from_documents(mesh_docs(*extra))
    profile = ProxyProfile(False, "shop", True, workload_inbound(mesh, mesh.pods["shop/reviews-v1"]))
    return {(r.type_url, r.name): r for r in proxy_resources(mesh, profile, TranslationMemo(), errors)}


def inbound(*extra: dict[str, Any], errors: list[str] | None = None) -> listener_pb2.Listener:
    listener = sidecar_config(*extra, errors=errors)[(LISTENER, "virtualInbound")].message
    assert isinstance(listener, listener_pb2.Listener)
    return listener


def chains(listener: listener_pb2.Listener) -> list[str]:
    return [c.name for c in listener.filter_chains]


def chain(listener: listener_pb2.Listener, name: str) -> Any:
    return next(c for c in listener.filter_chains if c.name == name)


def hcm(listener: listener_pb2.Listener, name: str) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    chain(listener, name).filters[0].typed_config.Unpack(manager)
    return manager


def http_rbac(listener: listener_pb2.Listener, name: str) -> list[dict[str, Any]]:
    out = []
    for f in hcm(listener, name).http_filters:
        if f.name == "envoy.filters.http.rbac":
            rbac = http_rbac_pb2.RBAC()
            f.typed_config.Unpack(rbac)
            out.append(json_format.MessageToDict(rbac.rules))
    return out


# -- PeerAuthentication ------------------------------------------------------------------


def test_without_a_policy_every_port_is_permissive_tls_and_plaintext() -> None:
    listener = inbound()
    assert chains(listener) == ["inbound|5432|tls", "inbound|5432|raw", "inbound|8080|tls", "inbound|8080|raw",
                                "virtualInbound-catchall-tls", "virtualInbound-catchall-tcp"]
    assert [f.name for f in listener.listener_filters] == [
        "envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector"]
    assert not listener.HasField("default_filter_chain")
    assert chain(listener, "inbound|8080|raw").filter_chain_match.transport_protocol == "raw_buffer"


def test_the_tls_chain_requires_a_client_certificate_from_sds_secrets() -> None:
    tls_chain = chain(inbound(), "inbound|8080|tls")
    assert tls_chain.filter_chain_match.destination_port.value == 8080
    assert tls_chain.filter_chain_match.transport_protocol == "tls"
    context = tls_pb2.DownstreamTlsContext()
    tls_chain.transport_socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    source = common.tls_certificate_sds_secret_configs[0].sds_config.api_config_source
    assert source.grpc_services[0].envoy_grpc.cluster_name == "sds-grpc"


def test_mesh_wide_strict_leaves_only_tls_chains() -> None:
    listener = inbound(pa("default", "istio-system", "STRICT"))
    assert chains(listener) == ["inbound|5432|tls", "inbound|8080|tls", "virtualInbound-catchall-tls"]


def test_a_namespace_policy_overrides_the_mesh_and_a_workload_policy_the_namespace() -> None:
    assert chains(inbound(pa("default", "istio-system", "STRICT"), pa("ns", "shop", "PERMISSIVE")))[-1] == \
        "virtualInbound-catchall-tcp"
    listener = inbound(pa("ns", "shop", "PERMISSIVE"), pa("w", "shop", "STRICT", {"app": "reviews"}))
    assert "inbound|8080|raw" not in chains(listener)


def test_unset_inherits_from_the_scope_outside() -> None:
    listener = inbound(pa("default", "istio-system", "STRICT"), pa("ns", "shop", "UNSET"),
                       pa("w", "shop", None, {"app": "reviews"}))
    assert chains(listener) == ["inbound|5432|tls", "inbound|8080|tls", "virtualInbound-catchall-tls"]


def test_port_level_disable_passes_that_port_through_untouched() -> None:
    listener = inbound(pa("w", "shop", "STRICT", {"app": "reviews"}, ports={"5432": "DISABLE"}))
    assert chains(listener) == ["inbound|5432|any", "inbound|8080|tls", "virtualInbound-catchall-tls"]
    assert not chain(listener, "inbound|5432|any").HasField("transport_socket")
    assert chain(listener, "inbound|5432|any").filter_chain_match.transport_protocol == ""


def test_a_policy_selecting_other_workloads_does_not_apply() -> None:
    assert "inbound|8080|raw" in chains(inbound(pa("w", "shop", "STRICT", {"app": "ratings"})))


def test_inbound_http_goes_to_the_app_on_loopback_and_forwards_the_peer_uri() -> None:
    config = sidecar_config()
    manager = hcm(config[(LISTENER, "virtualInbound")].message, "inbound|8080|tls")
    assert manager.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert manager.set_current_client_cert_details.uri
    assert manager.route_config.virtual_hosts[0].routes[0].route.cluster == "inbound|8080||"
    app = config[(CLUSTER, "inbound|8080||")].message
    address = app.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 8080)


# -- auto mTLS ---------------------------------------------------------------------------


def test_clusters_reach_sidecar_endpoints_over_mtls_checking_their_spiffe_id() -> None:
    config = sidecar_config()
    cluster = config[(CLUSTER, "outbound|9080||reviews.shop.svc.cluster.local")].message
    assert [m.name for m in cluster.transport_socket_matches] == ["tlsMode-istio", "tlsMode-disabled"]
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket_matches[0].transport_socket.typed_config.Unpack(context)
    sans = context.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert [s.matcher.exact for s in sans] == ["spiffe://cluster.local/ns/shop/sa/reviews"]
    assert context.sni == "outbound_.9080_._.reviews.shop.svc.cluster.local"
    assignment = config[(ENDPOINT, "outbound|9080||reviews.shop.svc.cluster.local")].message
    modes = {e.endpoint.address.socket_address.address: dict(e.metadata.filter_metadata["envoy.transport_socket_match"])
             for e in assignment.endpoints[0].lb_endpoints}
    assert modes == {"10.244.1.4": {"tlsMode": "istio"}, "10.244.1.9": {}}


def test_a_destination_port_under_disable_is_reached_in_plaintext() -> None:
    config = sidecar_config(pa("w", "shop", "STRICT", {"app": "reviews"}, ports={"5432": "DISABLE"}))
    assert not config[(CLUSTER, "outbound|5432||reviews.shop.svc.cluster.local")].message.transport_socket_matches
    assert config[(CLUSTER, "outbound|9080||reviews.shop.svc.cluster.local")].message.transport_socket_matches


def test_the_trust_domain_names_the_expected_peer() -> None:
    mesh = MeshSnapshot.from_documents(mesh_docs(), trust_domain="prod.example")
    out = {r.name: r.message for r in proxy_resources(mesh, ProxyProfile(False, "shop", True), TranslationMemo())
           if r.type_url == CLUSTER}
    context = tls_pb2.UpstreamTlsContext()
    out["outbound|9080||reviews.shop.svc.cluster.local"].transport_socket_matches[0].transport_socket.typed_config.Unpack(context)
    sans = context.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert sans[0].matcher.exact == "spiffe://prod.example/ns/shop/sa/reviews"


# -- AuthorizationPolicy -----------------------------------------------------------------


def test_without_authorization_policies_there_is_no_rbac_filter() -> None:
    assert http_rbac(inbound(), "inbound|8080|tls") == []


def test_deny_is_evaluated_before_allow() -> None:
    listener = inbound(ap("allow-all", "ALLOW", [{}]), ap("no-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin*"]}}]}]))
    deny, allow = http_rbac(listener, "inbound|8080|tls")
    assert deny["action"] == "DENY"
    assert deny["policies"]["ns[shop]-policy[no-admin]-rule[0]"]["permissions"] == [
        {"urlPath": {"path": {"prefix": "/admin"}}}]
    assert allow.get("action", "ALLOW") == "ALLOW"
    assert allow["policies"]["ns[shop]-policy[allow-all]-rule[0]"] == {"permissions": [{"any": True}], "principals": [{"any": True}]}


def test_an_allow_policy_without_rules_denies_everything() -> None:
    (allow,) = http_rbac(inbound(ap("nothing", "ALLOW", None)), "inbound|8080|tls")
    assert allow.get("policies", {}) == {}


def test_sources_operations_and_conditions_translate_to_envoy_rbac() -> None:
    rule = {"from": [{"source": {"principals": ["cluster.local/ns/web/sa/frontend"]}},
                     {"source": {"namespaces": ["ops"], "notIpBlocks": ["10.0.0.0/8"]}}],
            "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"], "ports": ["8080"]}}],
            "when": [{"key": "request.headers[x-tenant]", "values": ["a", "b"]},
                     {"key": "source.namespace", "notValues": ["test"]}]}
    (allow,) = http_rbac(inbound(ap("api", "ALLOW", [rule])), "inbound|8080|tls")
    policy = allow["policies"]["ns[shop]-policy[api]-rule[0]"]
    principals = policy["principals"][0]["andIds"]["ids"]
    frontend, ops = principals[0]["orIds"]["ids"]
    assert frontend == {"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/web/sa/frontend"}}}
    assert ops["andIds"]["ids"][0]["authenticated"]["principalName"]["safeRegex"]["regex"] == \
        "spiffe://[^/]+/ns/ops/sa/[^/]+"
    assert ops["andIds"]["ids"][1] == {"notId": {"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}}
    assert "notId" in principals[1]
    permissions = policy["permissions"][0]["andRules"]["rules"]
    assert permissions[0]["andRules"]["rules"] == [
        {"header": {"name": ":method", "stringMatch": {"exact": "GET"}}},
        {"urlPath": {"path": {"prefix": "/api/"}}},
        {"destinationPort": 8080}]
    assert permissions[1]["orRules"]["rules"][0] == {"header": {"name": "x-tenant", "stringMatch": {"exact": "a"}}}


def test_on_a_tcp_port_an_allow_rule_needing_http_never_matches_and_a_deny_rule_matches_more() -> None:
    listener = inbound(ap("get", "ALLOW", [{"to": [{"operation": {"methods": ["GET"]}}]}]),
                       ap("no-post", "DENY", [{"to": [{"operation": {"methods": ["POST"], "ports": ["5432"]}}]}]))
    rbacs = []
    for f in chain(listener, "inbound|5432|tls").filters[:-1]:
        rbac = network_rbac_pb2.RBAC()
        f.typed_config.Unpack(rbac)
        rbacs.append(json_format.MessageToDict(rbac.rules))
    deny, allow = rbacs
    assert deny["policies"]["ns[shop]-policy[no-post]-rule[0]"]["permissions"] == [{"destinationPort": 5432}]
    assert allow.get("policies", {}) == {}


def test_mesh_wide_policies_apply_and_other_namespaces_do_not() -> None:
    listener = inbound(ap("mesh", "DENY", [{}], namespace="istio-system"), ap("other", "DENY", [{}], namespace="web"))
    (deny,) = http_rbac(listener, "inbound|8080|tls")
    assert list(deny["policies"]) == ["ns[istio-system]-policy[mesh]-rule[0]"]


def test_an_untranslatable_policy_is_reported_and_fails_closed() -> None:
    errors: list[str] = []
    listener = inbound(ap("audit", "AUDIT", [{}]), errors=errors)
    assert errors == ["AuthorizationPolicy shop/audit: spec.action AUDIT: not supported (ALLOW and DENY are)"]
    (allow,) = http_rbac(listener, "inbound|8080|tls")
    assert allow.get("policies", {}) == {}


# -- a real Envoy accepts it -------------------------------------------------------------


def test_real_envoy_accepts_the_secure_sidecar_config(tmp_path: Path) -> None:
    rules = [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/*"], "namespaces": ["web"]}}],
              "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*", "*/health"], "notPorts": ["5432"]}}],
              "when": [{"key": "request.headers[x-tenant]", "values": ["a"]}, {"key": "source.ip", "values": ["10.0.0.0/8"]}]}]
    config = sidecar_config(pa("default", "istio-system", "STRICT"),
                            pa("w", "shop", None, {"app": "reviews"}, ports={"5432": "PERMISSIVE"}),
                            ap("api", "ALLOW", rules), ap("no-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin"]}}]}]))
    names = {name for _, name in config}
    assert {"virtualInbound", "inbound|8080||", "outbound|9080||reviews.shop.svc.cluster.local"} <= names
    assert validate_with_envoy(tmp_path, config.values()) == ""


def validate_with_envoy(tmp_path: Path, resources: Iterable[Resource], binary: Path = ENVOY) -> str:
    """"" when `envoy --mode validate` (or `binary`'s, e.g. tulle-proxy's) accepts the
    resources as static config of a sidecar whose bootstrap has Istio's `sds-grpc` and
    `xds-grpc` clusters, else its output."""
    def as_json(message: Any) -> dict[str, Any]:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    def grpc_cluster(name: str, pipe: str) -> dict[str, Any]:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"pipe": {"path": pipe}}}}]}]}}

    resources = list(resources)
    bootstrap = {
        "node": {"id": "sidecar~10.244.1.4~reviews-v1.shop~shop.svc.cluster.local", "cluster": "reviews"},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {
            "listeners": [as_json(r.message) for r in resources if r.type_url == LISTENER],
            "clusters": [grpc_cluster("xds-grpc", str(tmp_path / "xds.sock")),
                         grpc_cluster("sds-grpc", str(tmp_path / "sds.sock")),
                         *(as_json(r.message) for r in resources if r.type_url == CLUSTER)],
        },
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    done = subprocess.run([str(binary), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                          capture_output=True, text=True, timeout=60)
    return "" if done.returncode == 0 else done.stdout[-3000:] + done.stderr[-3000:]
