"""Envoy's RBAC filters in tulle-proxy: the principal and permission set tulle-control
emits (reports/mtls.md), ALLOW/DENY semantics, 403 for HTTP and close for TCP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from envoy.config.rbac.v3.rbac_pb2 import RBAC
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.http.headers import Headers
from proxy.rbac import RbacConfig, RbacStats, Subject, allowed
from tests.ports import free_port
from tests.tls.sidecars import HCM, ROUTER, App, cluster, endpoint, get, proxy, run

FRONTEND = "spiffe://cluster.local/ns/web/sa/frontend"
HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def rules(action: str, policies: dict[str, Any]) -> RbacConfig:
    message = json_format.ParseDict({"action": action, "policies": policies}, RBAC())
    return RbacConfig.from_rules(message, "rules", "")


def subject(path: str = "/", method: str = "GET", peer: str = FRONTEND, port: int = 8080,
            headers: dict[str, str] | None = None, remote: str = "10.0.0.9") -> Subject:
    fields = Headers()
    for name, value in (headers or {}).items():
        fields.add(name, value)
    return Subject(remote_ip=remote, destination_ip="10.0.0.1", destination_port=port,
                   peer_uris=(peer,) if peer else (), authenticated=bool(peer), headers=fields,
                   pseudo={":method": method, ":authority": "reviews.shop", ":path": path},
                   path=path.split("?", 1)[0])


FROM_FRONTEND = {"principals": [{"authenticated": {"principal_name": {"exact": FRONTEND}}}],
                 "permissions": [{"any": True}]}


def test_allow_with_no_policies_denies_everything() -> None:
    assert not rules("ALLOW", {}).allows(subject())


def test_allow_admits_only_matching_principals() -> None:
    config = rules("ALLOW", {"frontend": FROM_FRONTEND})
    assert config.allows(subject())
    assert not config.allows(subject(peer="spiffe://cluster.local/ns/web/sa/other"))
    assert not config.allows(subject(peer=""))


def test_deny_before_allow_wins() -> None:
    deny = rules("DENY", {"admin": {"principals": [{"any": True}], "permissions": [
        {"url_path": {"path": {"prefix": "/admin"}}}]}})
    allow = rules("ALLOW", {"frontend": FROM_FRONTEND})
    stats = RbacStats()
    assert not allowed((deny, allow), subject("/admin/users?x=1"), stats)
    assert allowed((deny, allow), subject("/api"), stats)
    assert (stats.allowed, stats.denied) == (2, 1)


def test_url_path_ignores_the_query() -> None:
    config = rules("ALLOW", {"p": {"principals": [{"any": True}], "permissions": [
        {"url_path": {"path": {"exact": "/api"}}}]}})
    assert config.allows(subject("/api?debug=1"))


def test_permission_sets_and_negation() -> None:
    config = rules("ALLOW", {"p": {"principals": [{"not_id": {"direct_remote_ip": {
        "address_prefix": "10.0.0.0", "prefix_len": 24}}}], "permissions": [{"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"or_rules": {"rules": [{"destination_port": 8080}, {"destination_port": 9090}]}},
            {"not_rule": {"header": {"name": "x-bad", "present_match": True}}}]}}]}})
    assert config.allows(subject(remote="10.1.0.9"))
    assert not config.allows(subject(remote="10.0.0.9"))
    assert not config.allows(subject(method="POST", remote="10.1.0.9"))
    assert not config.allows(subject(port=7000, remote="10.1.0.9"))
    assert not config.allows(subject(headers={"x-bad": "1"}, remote="10.1.0.9"))


def test_headers_never_match_on_a_network_filter() -> None:
    config = rules("DENY", {"p": {"principals": [{"any": True}], "permissions": [
        {"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}})
    tcp = Subject(remote_ip="10.0.0.9", destination_ip="10.0.0.1", destination_port=5432)
    assert config.allows(tcp)


def test_unsupported_rbac_fields_are_refused_with_their_path() -> None:
    with pytest.raises(ConfigError) as error:
        rules("ALLOW", {"p": {"principals": [{"any": True}], "permissions": [
            {"metadata": {"filter": "x", "path": [{"key": "y"}], "value": {"present_match": True}}}]}})
    assert error.value.path == "rules.policies[p].permissions[0].metadata"
    with pytest.raises(ConfigError) as error:
        rules("LOG", {})
    assert error.value.path == "rules.action"


def http_listener_with_rbac(port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "inbound",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
           "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    return {"name": "inbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def test_a_denied_http_request_gets_403_rbac_access_denied() -> None:
    async def scenario() -> None:
        app = App()
        await app.start()
        port = free_port()
        deny = {"name": "envoy.filters.http.rbac", "typed_config": {"@type": HTTP_RBAC, "rules": {
            "action": "DENY", "policies": {"admin": {"principals": [{"any": True}], "permissions": [
                {"url_path": {"path": {"prefix": "/admin"}}}]}}}}}
        sidecar = proxy([http_listener_with_rbac(port, [deny])], [cluster("app", [endpoint(app.port)])])
        await sidecar.start()
        try:
            assert await get(port, "/admin") == (403, b"RBAC: access denied")
            assert (await get(port, "/api"))[0] == 200
            assert len(app.requests) == 1
            assert sidecar.managers[0].rbac_stat_values() == {"rbac.allowed": 1, "rbac.denied": 1}
        finally:
            await sidecar.stop()
            app.close()
    run(scenario)


def test_a_denied_tcp_connection_is_closed_before_reaching_the_app() -> None:
    async def scenario() -> None:
        app = App()
        await app.start()
        port = free_port()
        listener = {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [
                        {"name": "envoy.filters.network.rbac", "typed_config": {
                            "@type": NETWORK_RBAC, "stat_prefix": "allow_", "rules": {"action": "ALLOW"}}},
                        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "tcp", "cluster": "app"}}]}]}
        sidecar = proxy([listener], [cluster("app", [endpoint(app.port)])])
        await sidecar.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            try:
                answer = await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:
                answer = b""
            writer.close()
            assert answer == b""
            assert app.requests == []
        finally:
            await sidecar.stop()
            app.close()
    run(scenario)
