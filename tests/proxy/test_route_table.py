"""Route matching: virtual hosts by domain, then the first matching route."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.http.headers import Headers
from proxy.router.route import ForwardAction
from proxy.router.route_table import RouteTable


def table(text: str) -> RouteTable:
    message = RouteConfiguration()
    json_format.ParseDict(yaml.safe_load(text), message)
    return RouteTable.from_proto(message)


def cluster_for(routes: RouteTable, target: str, host: str = "example.com", method: str = "GET",
                headers: dict[str, str] | None = None) -> str | None:
    selection = routes.select(method, host, target, Headers(list((headers or {}).items())))
    if selection is None:
        return None
    action: Any = selection.route.action
    assert isinstance(action, ForwardAction)
    return action.cluster


PATHS = table("""
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - {match: {path: /exact}, route: {cluster: exact}}
  - {match: {prefix: /exact}, route: {cluster: prefix}}
  - {match: {path: /CaseFree, case_sensitive: false}, route: {cluster: nocase}}
  - {match: {safe_regex: {regex: '/users/[0-9]+'}}, route: {cluster: regex}}
  - {match: {path_separated_prefix: /api}, route: {cluster: separated}}
""")


@pytest.mark.parametrize(("target", "cluster"), [
    ("/exact", "exact"),
    ("/exact?q=1", "exact"),
    ("/exactly", "prefix"),
    ("/exact/x", "prefix"),
    ("/CASEFREE", "nocase"),
    ("/users/42", "regex"),
    ("/users/42?full=1", "regex"),
    ("/users/42/x", None),
    ("/api", "separated"),
    ("/api/v1", "separated"),
    ("/apis", None),
    ("/other", None),
])
def test_path_matching(target: str, cluster: str | None) -> None:
    assert cluster_for(PATHS, target) == cluster


def test_first_matching_route_wins() -> None:
    routes = table("""
virtual_hosts:
- {name: all, domains: ['*'], routes: [
    {match: {prefix: /}, route: {cluster: first}},
    {match: {prefix: /a}, route: {cluster: second}}]}
""")
    assert cluster_for(routes, "/a") == "first"


DOMAINS = table("""
virtual_hosts:
- {name: exact, domains: [api.example.com], routes: [{match: {prefix: /}, route: {cluster: exact}}]}
- {name: suffix, domains: ['*.example.com'], routes: [{match: {prefix: /}, route: {cluster: suffix}}]}
- {name: longer, domains: ['*.eu.example.com'], routes: [{match: {prefix: /}, route: {cluster: longer}}]}
- {name: prefix, domains: ['api.*'], routes: [{match: {prefix: /}, route: {cluster: prefix}}]}
- {name: default, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: default}}]}
""")


@pytest.mark.parametrize(("host", "cluster"), [
    ("api.example.com", "exact"),
    ("API.Example.COM", "exact"),
    ("www.example.com", "suffix"),
    ("x.eu.example.com", "longer"),
    ("example.com", "default"),
    ("api.example.org", "prefix"),
    ("unknown.test", "default"),
])
def test_virtual_host_selection_order(host: str, cluster: str) -> None:
    assert cluster_for(DOMAINS, "/", host=host) == cluster


def test_no_virtual_host_means_no_route() -> None:
    routes = table("""
virtual_hosts:
- {name: api, domains: [api.example.com], routes: [{match: {prefix: /}, route: {cluster: a}}]}
""")
    assert cluster_for(routes, "/", host="other.test") is None


def test_wildcard_suffix_needs_a_label_before_it() -> None:
    routes = table("""
virtual_hosts:
- {name: org, domains: ['*.example.org'], routes: [{match: {prefix: /}, route: {cluster: b}}]}
""")
    assert cluster_for(routes, "/", host="example.org") is None
    assert cluster_for(routes, "/", host="www.example.org") == "b"


def test_duplicate_domain_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"route_config\.virtual_hosts\[1\]\.domains"):
        table("""
virtual_hosts:
- {name: a, domains: [x.test], routes: []}
- {name: b, domains: [x.test], routes: []}
""")


HEADERS = table("""
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - match: {prefix: /, headers: [{name: x-canary, string_match: {exact: 'true'}}]}
    route: {cluster: canary}
  - match: {prefix: /, headers: [{name: x-tenant, present_match: true},
                                 {name: x-tier, string_match: {prefix: gold}}]}
    route: {cluster: gold}
  - match: {prefix: /, headers: [{name: ':method', string_match: {exact: POST}}]}
    route: {cluster: post}
  - match: {prefix: /, headers: [{name: x-env, string_match: {exact: prod}, invert_match: true}]}
    route: {cluster: not-prod}
  - match: {prefix: /, headers: [{name: user-agent, string_match: {suffix: bot, ignore_case: true}}]}
    route: {cluster: bot}
  - match: {prefix: /, query_parameters: [{name: debug, string_match: {exact: '1'}}]}
    route: {cluster: debug}
  - {match: {prefix: /}, route: {cluster: default}}
""")


@pytest.mark.parametrize(("headers", "method", "target", "cluster"), [
    ({"x-canary": "true"}, "GET", "/", "canary"),
    ({"x-canary": "TRUE"}, "GET", "/", "default"),
    ({"x-tenant": "t", "x-tier": "gold-plus"}, "GET", "/", "gold"),
    ({"x-tier": "gold"}, "GET", "/", "default"),
    ({}, "POST", "/", "post"),
    ({"x-env": "staging"}, "GET", "/", "not-prod"),
    ({"x-env": "prod"}, "GET", "/", "default"),
    ({}, "GET", "/", "default"),          # a missing header never matches, even inverted
    ({"user-agent": "CrawlBOT"}, "GET", "/", "bot"),
    ({}, "GET", "/?debug=1", "debug"),
    ({}, "GET", "/?debug=2", "default"),
])
def test_header_and_query_matchers(headers: dict[str, str], method: str, target: str,
                                   cluster: str) -> None:
    assert cluster_for(HEADERS, target, method=method, headers=headers) == cluster


def test_repeated_header_is_matched_as_a_comma_joined_value() -> None:
    routes = table("""
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - match: {prefix: /, headers: [{name: x-a, string_match: {exact: '1,2'}}]}
    route: {cluster: joined}
""")
    selection = routes.select("GET", "h", "/", Headers([("x-a", "1"), ("x-a", "2")]))
    assert selection is not None


def test_prefix_rewrite_keeps_the_query() -> None:
    routes = table("""
virtual_hosts:
- {name: all, domains: ['*'], routes: [{match: {prefix: /api/}, route: {cluster: a, prefix_rewrite: /v2/}}]}
""")
    selection = routes.select("GET", "h", "/api/users?id=7", Headers())
    assert selection is not None
    action = selection.route.action
    assert isinstance(action, ForwardAction)
    assert action.rewrite_path(selection.path, selection.query, selection.matched) == "/v2/users?id=7"


def test_regex_rewrite_substitutes_groups() -> None:
    routes = table(r"""
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - match: {prefix: /re/}
    route: {cluster: a, regex_rewrite: {pattern: {regex: '^/re/([^/]+)/(.*)$'}, substitution: '/\2/\1'}}
""")
    selection = routes.select("GET", "h", "/re/shop/items/9", Headers())
    assert selection is not None
    action = selection.route.action
    assert isinstance(action, ForwardAction)
    assert action.rewrite_path(selection.path, selection.query, selection.matched) == "/items/9/shop"


def test_weighted_clusters_split_by_weight() -> None:
    routes = table("""
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - match: {prefix: /}
    route: {weighted_clusters: {clusters: [{name: a, weight: 75}, {name: b, weight: 25}]}}
""")
    action = routes.virtual_hosts[0].routes[0].action
    assert isinstance(action, ForwardAction)
    assert action.pick_cluster(0.0) == "a"
    assert action.pick_cluster(0.7499) == "a"
    assert action.pick_cluster(0.75) == "b"


def test_default_route_timeout_is_15s_and_0s_disables_it() -> None:
    routes = table("""
virtual_hosts:
- {name: all, domains: ['*'], routes: [
    {match: {prefix: /a}, route: {cluster: a}},
    {match: {prefix: /b}, route: {cluster: b, timeout: 0s}}]}
""")
    first, second = (route.action for route in routes.virtual_hosts[0].routes)
    assert isinstance(first, ForwardAction) and isinstance(second, ForwardAction)
    assert first.timeout == 15.0
    assert second.timeout == 0.0


def test_unsupported_route_field_is_rejected_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"virtual_hosts\[0\]\.routes\[0\]\.route\.hedge_policy"):
        table("""
virtual_hosts:
- {name: all, domains: ['*'], routes: [
    {match: {prefix: /}, route: {cluster: a, hedge_policy: {hedge_on_per_try_timeout: true}}}]}
""")


DECIDED_BY_HEADER = table("""
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - {match: {prefix: /canary, headers: [{name: x-canary, string_match: {exact: '1'}}]}, route: {cluster: canary}}
  - {match: {prefix: /, query_parameters: [{name: v, string_match: {exact: '2'}}]}, route: {cluster: v2}}
  - {match: {prefix: /}, route: {cluster: stable}}
""")


@pytest.mark.parametrize(("target", "deterministic"), [
    ("/canary/a", False),   # a header matcher was consulted: another request may differ
    ("/other", True),       # only the authority and the target (with its query) decided
    ("/other?v=2", True),
])
def test_a_selection_says_whether_only_authority_and_target_decided_it(target: str,
                                                                        deterministic: bool) -> None:
    selection = DECIDED_BY_HEADER.select("GET", "h", target, Headers())
    assert selection is not None
    assert selection.deterministic is deterministic
