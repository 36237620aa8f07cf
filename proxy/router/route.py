"""One route: its match, its action, its header mutations — compiled from Envoy's Route.

Rules (envoy.config.route.v3.Route / RouteMatch / RouteAction):
- path matching sees the path without its query string; `prefix` is a string prefix,
  `path` an exact path, `path_separated_prefix` a prefix ending at a "/" boundary,
  `safe_regex` a full match; `case_sensitive: false` compares case-insensitively (not
  for regexes); then every header matcher and every query-parameter matcher must match;
- actions: `route` (cluster or weighted_clusters, rewrites, timeout, retry policy, hash
  policy), `redirect`, `direct_response`;
- `timeout` defaults to 15 s, `0s` disables it; `prefix_rewrite` replaces the matched
  prefix (the whole path for a `path` match); `regex_rewrite` substitutes every match in
  the path; the query string survives both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.http.retry import RetryPolicy
from proxy.http.stream_duration import StreamTimeouts
from proxy.proto_config import join, seconds
from proxy.router.header_mutation import HeaderMutation, header_mutation
from proxy.router.matchers import (
    HeaderMatch,
    QueryParameterMatch,
    compile_regex,
    header_matches,
    regex_matcher,
)

DEFAULT_ROUTE_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class RouteMatch:
    kind: Literal["prefix", "path", "separated_prefix", "regex", "connect"]   # connect: connect_matcher
    value: str
    case_sensitive: bool = True
    pattern: re.Pattern[str] | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query_parameters: tuple[QueryParameterMatch, ...] = ()

    def path_matches(self, path: str) -> int:
        """Length of the matched prefix (>= 0) or -1; `path` has no query string."""
        kind = self.kind
        value = self.value
        if not self.case_sensitive:
            path = path.lower()
        if kind == "prefix":
            return len(value) if path.startswith(value) else -1
        if kind == "path":
            return len(value) if path == value else -1
        if kind == "separated_prefix":
            if path == value or (path.startswith(value) and path[len(value)] in "/"):
                return len(value)
            return -1
        if kind == "connect":   # matches CONNECT requests only (RouteTable.select)
            return -1
        assert self.pattern is not None
        return len(path) if self.pattern.fullmatch(path) else -1

    @classmethod
    def from_proto(cls, message: Message, path: str) -> RouteMatch:
        reject_unsupported(message, path, ("prefix", "path", "safe_regex", "path_separated_prefix",
                                    "connect_matcher", "case_sensitive", "headers", "query_parameters"))
        kind = message.WhichOneof("path_specifier")
        case_sensitive = message.case_sensitive.value if message.HasField("case_sensitive") else True
        headers = header_matches(message.headers, join(path, "headers"))
        query_parameters = tuple(
            QueryParameterMatch.from_proto(query, f"{join(path, 'query_parameters')}[{index}]")
            for index, query in enumerate(message.query_parameters))
        if kind is None:
            raise ConfigError(path, "one of prefix, path, safe_regex, path_separated_prefix, connect_matcher "
                                    "is required")
        if kind == "connect_matcher":
            reject_unsupported(message.connect_matcher, join(path, "connect_matcher"), ())
            return cls("connect", "", True, None, headers, query_parameters)
        if kind == "safe_regex":
            pattern = regex_matcher(message.safe_regex, join(path, "safe_regex"))
            if not case_sensitive:
                pattern = re.compile(pattern.pattern, re.IGNORECASE)
            return cls("regex", "", True, pattern, headers, query_parameters)
        value = getattr(message, kind)
        if not case_sensitive:
            value = value.lower()
        short: Literal["prefix", "path", "separated_prefix"] = (
            "separated_prefix" if kind == "path_separated_prefix" else kind)
        return cls(short, value, case_sensitive, None, headers, query_parameters)


@dataclass(frozen=True, slots=True)
class HashPolicy:
    kind: Literal["header", "cookie", "source_ip", "query_parameter"]
    name: str = ""
    terminal: bool = False
    # a cookie policy with a ttl generates a missing cookie (proxy/http/hash_cookie.py)
    ttl: int | None = None
    path: str = ""
    attributes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_proto(cls, message: Message, path: str) -> HashPolicy:
        reject_unsupported(message, path, ("header", "cookie", "connection_properties",
                                    "query_parameter", "terminal"))
        kind = message.WhichOneof("policy_specifier")
        terminal = bool(message.terminal)
        if kind == "header":
            reject_unsupported(message.header, join(path, "header"), ("header_name",))
            return cls("header", message.header.header_name.lower(), terminal)
        if kind == "cookie":
            cookie = message.cookie
            here = join(path, "cookie")
            reject_unsupported(cookie, here, ("name", "ttl", "path", "attributes"))
            if not cookie.name:
                raise ConfigError(join(here, "name"), "must not be empty")
            attributes = []
            for index, attribute in enumerate(cookie.attributes):
                reject_unsupported(attribute, f"{here}.attributes[{index}]", ("name", "value"))
                if not attribute.name:
                    raise ConfigError(f"{here}.attributes[{index}].name", "must not be empty")
                attributes.append((attribute.name, attribute.value))
            # Envoy's Max-Age is whole seconds
            ttl = cookie.ttl.seconds if cookie.HasField("ttl") else None
            return cls("cookie", cookie.name, terminal, ttl, cookie.path, tuple(attributes))
        if kind == "connection_properties":
            if not message.connection_properties.source_ip:
                raise ConfigError(join(path, "connection_properties.source_ip"), "must be true")
            return cls("source_ip", "", terminal)
        if kind == "query_parameter":
            return cls("query_parameter", message.query_parameter.name, terminal)
        raise ConfigError(path, "one of header, cookie, connection_properties, query_parameter is required")


@dataclass(frozen=True, slots=True)
class ForwardAction:
    cluster: str = ""
    weighted_clusters: tuple[tuple[str, int], ...] = ()
    total_weight: int = 0
    prefix_rewrite: str | None = None
    regex_rewrite: tuple[re.Pattern[str], str] | None = None
    host_rewrite_literal: str = ""
    auto_host_rewrite: bool = False
    append_x_forwarded_host: bool = False     # when the host is rewritten
    timeout: float = DEFAULT_ROUTE_TIMEOUT     # 0 = no timeout
    idle_timeout: float | None = None         # None: the connection manager's stream_idle_timeout
    retry_policy: RetryPolicy | None = None
    hash_policy: tuple[HashPolicy, ...] = ()
    upgrades: frozenset[str] = frozenset()            # enabled on this route
    upgrades_disabled: frozenset[str] = frozenset()   # disabled on this route
    connect_terminate: bool = False   # CONNECT's connect_config: answer it here, tunnel raw bytes
    # max_stream_duration / max_grpc_timeout (proxy/http/stream_duration.py); None: neither
    stream_timeouts: StreamTimeouts | None = None

    def pick_cluster(self, random_value: float) -> str:
        if not self.weighted_clusters:
            return self.cluster
        point = random_value * self.total_weight
        for name, weight in self.weighted_clusters:
            if point < weight:
                return name
            point -= weight
        return self.weighted_clusters[-1][0]

    @classmethod
    def from_proto(cls, message: Message, path: str, match: RouteMatch) -> ForwardAction:
        reject_unsupported(message, path, ("cluster", "weighted_clusters", "prefix_rewrite",
                                    "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite",
                                    "append_x_forwarded_host",
                                    "timeout", "idle_timeout", "retry_policy", "hash_policy",
                                    "upgrade_configs", "max_stream_duration", "max_grpc_timeout",
                                    "grpc_timeout_offset"))
        weighted: list[tuple[str, int]] = []
        if message.HasField("weighted_clusters"):
            clusters = message.weighted_clusters
            reject_unsupported(clusters, join(path, "weighted_clusters"), ("clusters", "total_weight"))
            for index, cluster in enumerate(clusters.clusters):
                here = f"{path}.weighted_clusters.clusters[{index}]"
                reject_unsupported(cluster, here, ("name", "weight"))
                if not cluster.name:
                    raise ConfigError(join(here, "name"), "must not be empty")
                weighted.append((cluster.name, cluster.weight.value))
            if not weighted or sum(weight for _, weight in weighted) == 0:
                raise ConfigError(join(path, "weighted_clusters"), "needs a cluster with weight > 0")
        elif not message.cluster:
            raise ConfigError(path, "one of cluster or weighted_clusters is required")
        prefix_rewrite = None
        if message.prefix_rewrite:
            if match.kind == "regex":
                raise ConfigError(join(path, "prefix_rewrite"), "cannot be used with a safe_regex match")
            prefix_rewrite = message.prefix_rewrite
        regex_rewrite = None
        if message.HasField("regex_rewrite"):
            if prefix_rewrite is not None:
                raise ConfigError(join(path, "regex_rewrite"), "cannot be combined with prefix_rewrite")
            regex_rewrite = _regex_rewrite(message.regex_rewrite, join(path, "regex_rewrite"))
        upgrades, disabled = set(), set()
        connect_terminate = False
        for index, upgrade in enumerate(message.upgrade_configs):
            here = f"{path}.upgrade_configs[{index}]"
            reject_unsupported(upgrade, here, ("upgrade_type", "enabled", "connect_config"))
            if upgrade.HasField("connect_config"):
                if upgrade.upgrade_type.lower() != "connect":
                    raise ConfigError(join(here, "connect_config"), "is only for upgrade_type CONNECT")
                reject_unsupported(upgrade.connect_config, join(here, "connect_config"), ())
                connect_terminate = True
            if not upgrade.HasField("enabled") or upgrade.enabled.value:
                upgrades.add(upgrade.upgrade_type.lower())
            else:
                disabled.add(upgrade.upgrade_type.lower())
        return cls(
            cluster=message.cluster,
            weighted_clusters=tuple(weighted),
            total_weight=sum(weight for _, weight in weighted),
            prefix_rewrite=prefix_rewrite,
            regex_rewrite=regex_rewrite,
            host_rewrite_literal=message.host_rewrite_literal,
            auto_host_rewrite=message.auto_host_rewrite.value,
            append_x_forwarded_host=message.append_x_forwarded_host,
            timeout=seconds(message.timeout) if message.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT,
            idle_timeout=seconds(message.idle_timeout) if message.HasField("idle_timeout") else None,
            retry_policy=(RetryPolicy.from_proto(message.retry_policy, join(path, "retry_policy"))
                          if message.HasField("retry_policy") else None),
            hash_policy=tuple(HashPolicy.from_proto(policy, f"{path}.hash_policy[{index}]")
                              for index, policy in enumerate(message.hash_policy)),
            upgrades=frozenset(upgrades),
            upgrades_disabled=frozenset(disabled),
            connect_terminate=connect_terminate,
            stream_timeouts=StreamTimeouts.from_route_action(message, path),
        )

    def rewrite_path(self, path: str, query: str, matched: int) -> str | None:
        """The rewritten request target, or None when this route does not rewrite."""
        if self.prefix_rewrite is not None:
            new_path = self.prefix_rewrite + path[matched:]
        elif self.regex_rewrite is not None:
            pattern, substitution = self.regex_rewrite
            new_path = pattern.sub(substitution, path)
        else:
            return None
        return new_path + query


def _regex_rewrite(message: Message, path: str) -> tuple[re.Pattern[str], str]:
    reject_unsupported(message, path, ("pattern", "substitution"))
    pattern = regex_matcher(message.pattern, join(path, "pattern"))
    substitution = message.substitution
    try:
        pattern.sub(substitution, "")
    except re.error as error:
        raise ConfigError(join(path, "substitution"), str(error)) from None
    return pattern, substitution


_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}


@dataclass(frozen=True, slots=True)
class RedirectAction:
    scheme: str = ""          # "" keeps the request's scheme
    host: str = ""
    port: int = 0
    path: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: tuple[re.Pattern[str], str] | None = None
    status: int = 301
    strip_query: bool = False

    @classmethod
    def from_proto(cls, message: Message, path: str) -> RedirectAction:
        reject_unsupported(message, path, ("https_redirect", "scheme_redirect", "host_redirect",
                                    "port_redirect", "path_redirect", "prefix_rewrite",
                                    "regex_rewrite", "response_code", "strip_query"))
        scheme = "https" if message.https_redirect else message.scheme_redirect.lower()
        return cls(
            scheme=scheme,
            host=message.host_redirect,
            port=message.port_redirect,
            path=message.path_redirect if message.HasField("path_redirect") else None,
            prefix_rewrite=message.prefix_rewrite if message.HasField("prefix_rewrite") else None,
            regex_rewrite=(_regex_rewrite(message.regex_rewrite, join(path, "regex_rewrite"))
                           if message.HasField("regex_rewrite") else None),
            status=_REDIRECT_CODES[message.response_code],
            strip_query=message.strip_query,
        )

    def location(self, scheme: str, authority: str, path: str, query: str, matched: int) -> str:
        """Envoy's redirect URL for a request (path without query, query with its '?').

        host_redirect replaces host and port; port_redirect the port; a scheme change
        drops the port only when it was the old scheme's explicit default (:80, :443)."""
        host, _, port = authority.rpartition(":") if _has_port(authority) else (authority, "", "")
        new_scheme = self.scheme or scheme
        if self.scheme and ((scheme == "http" and port == "80") or (scheme == "https" and port == "443")):
            port = ""    # an explicit default port of the old scheme goes with it
        if self.host:
            # host_redirect replaces the whole authority (a port in it included)
            host, _, port = self.host.rpartition(":") if _has_port(self.host) else (self.host, "", "")
        if self.port:
            port = str(self.port)
        if self.path is not None:
            new_path = self.path
            if "?" in new_path:
                new_path, _, new_query = new_path.partition("?")
                query = "?" + new_query if new_query else ""
        elif self.prefix_rewrite is not None:
            new_path = self.prefix_rewrite + path[matched:]
        elif self.regex_rewrite is not None:
            pattern, substitution = self.regex_rewrite
            new_path = pattern.sub(substitution, path)
        else:
            new_path = path
        if self.strip_query:
            query = ""
        netloc = f"{host}:{port}" if port else host
        return f"{new_scheme}://{netloc}{new_path}{query}"


def _has_port(authority: str) -> bool:
    if authority.startswith("["):
        return "]:" in authority
    return ":" in authority


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    status: int
    body: bytes = b""

    @classmethod
    def from_proto(cls, message: Message, path: str) -> DirectResponseAction:
        reject_unsupported(message, path, ("status", "body"))
        status = message.status
        if not 200 <= status < 600:
            raise ConfigError(join(path, "status"), "must be in [200, 600)")
        body = b""
        if message.HasField("body"):
            source = message.body
            here = join(path, "body")
            reject_unsupported(source, here, ("inline_string", "inline_bytes", "filename"))
            kind = source.WhichOneof("specifier")
            if kind == "inline_string":
                body = source.inline_string.encode()
            elif kind == "inline_bytes":
                body = source.inline_bytes
            elif kind == "filename":
                try:
                    with open(source.filename, "rb") as handle:
                        body = handle.read()
                except OSError as error:
                    raise ConfigError(join(here, "filename"), str(error)) from None
        return cls(status, body)


@dataclass(frozen=True, slots=True)
class Route:
    match: RouteMatch
    action: ForwardAction | RedirectAction | DirectResponseAction
    request_headers: HeaderMutation = field(default_factory=HeaderMutation)
    response_headers: HeaderMutation = field(default_factory=HeaderMutation)
    name: str = ""

    @classmethod
    def from_proto(cls, message: Message, path: str) -> Route:
        reject_unsupported(message, path, ("name", "match", "route", "redirect", "direct_response",
                                    "request_headers_to_add", "request_headers_to_remove",
                                    "response_headers_to_add", "response_headers_to_remove",
                                    "typed_per_filter_config", "decorator", "metadata"))
        for index, name in enumerate(message.typed_per_filter_config):
            raise ConfigError(f"{path}.typed_per_filter_config[{index}]",
                              f"per-filter config for {name!r} is not supported")
        match = RouteMatch.from_proto(message.match, join(path, "match"))
        kind = message.WhichOneof("action")
        action: ForwardAction | RedirectAction | DirectResponseAction
        if kind == "route":
            action = ForwardAction.from_proto(message.route, join(path, "route"), match)
        elif kind == "redirect":
            action = RedirectAction.from_proto(message.redirect, join(path, "redirect"))
        elif kind == "direct_response":
            action = DirectResponseAction.from_proto(message.direct_response,
                                                     join(path, "direct_response"))
        else:
            raise ConfigError(path, "one of route, redirect, direct_response is required")
        return cls(
            match=match,
            action=action,
            request_headers=header_mutation(
                message.request_headers_to_add, message.request_headers_to_remove,
                path, "request_headers_to_add", "request_headers_to_remove"),
            response_headers=header_mutation(
                message.response_headers_to_add, message.response_headers_to_remove,
                path, "response_headers_to_add", "response_headers_to_remove"),
            name=message.name,
        )


__all__ = ["DEFAULT_ROUTE_TIMEOUT", "DirectResponseAction", "ForwardAction", "HashPolicy",
           "RedirectAction", "Route", "RouteMatch", "compile_regex"]
