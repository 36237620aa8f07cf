"""The route table: virtual hosts chosen by Host, then the first route whose match holds.

Rules (envoy.config.route.v3.RouteConfiguration / VirtualHost):
- the Host header (lower-cased) picks the virtual host: an exact domain first, then the
  longest suffix wildcard (`*.example.org`, which needs at least one character before the
  suffix), then the longest prefix wildcard (`api.*`), then `*`; a domain may appear in one
  virtual host only;
- within the virtual host, routes are tried in order and the first whose path, header and
  query matchers all hold wins; no virtual host or no route means 404;
- header mutations of a request/response apply route, then virtual host, then route
  configuration (outer levels overwrite inner ones), reversed with
  `most_specific_header_mutations_wins`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.http.headers import Headers
from proxy.http.retry import RetryPolicy
from proxy.proto_config import join
from proxy.router.header_mutation import HeaderMutation, header_mutation
from proxy.router.matchers import parse_query
from proxy.router.route import Route


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    request_headers: HeaderMutation = field(default_factory=HeaderMutation)
    response_headers: HeaderMutation = field(default_factory=HeaderMutation)
    include_request_attempt_count: bool = False
    include_attempt_count_in_response: bool = False
    retry_policy: RetryPolicy | None = None

    @classmethod
    def from_proto(cls, message: Message, path: str) -> VirtualHost:
        reject_unsupported(message, path, ("name", "domains", "routes", "request_headers_to_add",
                                    "request_headers_to_remove", "response_headers_to_add",
                                    "response_headers_to_remove", "include_request_attempt_count",
                                    "include_attempt_count_in_response", "retry_policy",
                                    "metadata"))
        if not message.domains:
            raise ConfigError(join(path, "domains"), "at least one domain is required")
        return cls(
            name=message.name,
            domains=tuple(domain.lower() for domain in message.domains),
            routes=tuple(Route.from_proto(route, f"{path}.routes[{index}]")
                         for index, route in enumerate(message.routes)),
            request_headers=header_mutation(
                message.request_headers_to_add, message.request_headers_to_remove,
                path, "request_headers_to_add", "request_headers_to_remove"),
            response_headers=header_mutation(
                message.response_headers_to_add, message.response_headers_to_remove,
                path, "response_headers_to_add", "response_headers_to_remove"),
            include_request_attempt_count=message.include_request_attempt_count,
            include_attempt_count_in_response=message.include_attempt_count_in_response,
            retry_policy=(RetryPolicy.from_proto(message.retry_policy, join(path, "retry_policy"))
                          if message.HasField("retry_policy") else None),
        )


@dataclass(slots=True)   # not frozen: built per request, and frozen __init__ is slow
class RouteSelection:
    """The outcome of routing one request."""

    route: Route
    virtual_host: VirtualHost
    path: str          # the request path without query
    query: str         # "" or "?..." as received
    matched: int       # length of the matched path prefix (for prefix_rewrite)
    # the outcome depends only on the authority and the target (no header matcher was
    # consulted), so it holds for every request with those two
    deterministic: bool = True


class RouteTable:
    """A compiled RouteConfiguration."""

    def __init__(self, name: str, virtual_hosts: tuple[VirtualHost, ...],
                 request_headers: HeaderMutation, response_headers: HeaderMutation,
                 most_specific_wins: bool = False) -> None:
        self.name = name
        self.virtual_hosts = virtual_hosts
        self.request_headers = request_headers
        self.response_headers = response_headers
        self.most_specific_wins = most_specific_wins
        self._exact: dict[str, VirtualHost] = {}
        suffixes: list[tuple[str, VirtualHost]] = []
        prefixes: list[tuple[str, VirtualHost]] = []
        self._default: VirtualHost | None = None
        seen: set[str] = set()
        for index, vhost in enumerate(virtual_hosts):
            for domain in vhost.domains:
                if domain in seen:
                    raise ConfigError(f"virtual_hosts[{index}].domains",
                                      f"domain {domain!r} appears in more than one virtual host")
                seen.add(domain)
                if domain == "*":
                    self._default = vhost
                elif domain.startswith("*"):
                    suffixes.append((domain[1:], vhost))
                elif domain.endswith("*"):
                    prefixes.append((domain[:-1], vhost))
                else:
                    self._exact[domain] = vhost
        self._suffixes = tuple(sorted(suffixes, key=lambda item: -len(item[0])))
        self._prefixes = tuple(sorted(prefixes, key=lambda item: -len(item[0])))
        self._host_cache: dict[str, VirtualHost | None] = {}
        # the mutation levels of each (route, virtual host), computed once (keyed by identity)
        self._request_levels: dict[int, tuple[HeaderMutation, ...]] = {}
        self._response_levels: dict[int, tuple[HeaderMutation, ...]] = {}

    @classmethod
    def from_proto(cls, message: Message, path: str = "route_config") -> RouteTable:
        reject_unsupported(message, path, ("name", "virtual_hosts", "request_headers_to_add",
                                    "request_headers_to_remove", "response_headers_to_add",
                                    "response_headers_to_remove",
                                    "most_specific_header_mutations_wins", "validate_clusters"))
        vhosts = tuple(VirtualHost.from_proto(vhost, f"{path}.virtual_hosts[{index}]")
                       for index, vhost in enumerate(message.virtual_hosts))
        try:
            return cls(
                name=message.name,
                virtual_hosts=vhosts,
                request_headers=header_mutation(
                    message.request_headers_to_add, message.request_headers_to_remove,
                    path, "request_headers_to_add", "request_headers_to_remove"),
                response_headers=header_mutation(
                    message.response_headers_to_add, message.response_headers_to_remove,
                    path, "response_headers_to_add", "response_headers_to_remove"),
                most_specific_wins=message.most_specific_header_mutations_wins,
            )
        except ConfigError as error:
            raise ConfigError(join(path, error.path), error.reason) from None

    def clusters(self) -> set[str]:
        """Every cluster a route of this table may forward to."""
        from proxy.router.route import ForwardAction

        names: set[str] = set()
        for vhost in self.virtual_hosts:
            for route in vhost.routes:
                if isinstance(route.action, ForwardAction):
                    if route.action.cluster:
                        names.add(route.action.cluster)
                    names.update(name for name, _ in route.action.weighted_clusters)
        return names

    def virtual_host(self, host: str) -> VirtualHost | None:
        if host in self._host_cache:
            return self._host_cache[host]
        found = self._find_virtual_host(host.lower())
        if len(self._host_cache) < 4096:
            self._host_cache[host] = found
        return found

    def _find_virtual_host(self, host: str) -> VirtualHost | None:
        vhost = self._exact.get(host)
        if vhost is not None:
            return vhost
        for suffix, candidate in self._suffixes:
            if len(host) > len(suffix) and host.endswith(suffix):
                return candidate
        for prefix, candidate in self._prefixes:
            if len(host) > len(prefix) and host.startswith(prefix):
                return candidate
        return self._default

    def select(self, method: str, authority: str, target: str, headers: Headers) -> RouteSelection | None:
        vhost = self.virtual_host(authority)
        if vhost is None:
            return None
        if method == "CONNECT":
            return self._select_connect(vhost, authority, target, headers)
        path, mark, query = target.partition("?")
        query_string = mark + query
        params: dict[str, str] | None = None
        pseudo: dict[str, str] | None = None
        deterministic = True
        for route in vhost.routes:
            match = route.match
            matched = match.path_matches(path)
            if matched < 0:
                continue
            if match.headers:
                deterministic = False
                if pseudo is None:
                    pseudo = {":method": method, ":path": target, ":authority": authority,
                              ":scheme": "http"}
                if not all(header.matches(headers, pseudo) for header in match.headers):
                    continue
            if match.query_parameters:
                if params is None:
                    params = parse_query(query)
                if not all(param.matches(params) for param in match.query_parameters):
                    continue
            return RouteSelection(route, vhost, path, query_string, matched, deterministic)
        return None

    @staticmethod
    def _select_connect(vhost: VirtualHost, authority: str, target: str, headers: Headers) -> RouteSelection | None:
        """A CONNECT has no path: only connect_matcher routes match it (with their header
        matchers; its query parameters are none). Not deterministic: the connection manager
        remembers routes by authority and target, and a CONNECT's target is only an authority."""
        pseudo = {":method": "CONNECT", ":path": "", ":authority": authority, ":scheme": "http"}
        for route in vhost.routes:
            match = route.match
            if match.kind != "connect" or match.query_parameters:
                continue
            if all(header.matches(headers, pseudo) for header in match.headers):
                return RouteSelection(route, vhost, "", "", 0, deterministic=False)
        return None

    def request_mutations(self, selection: RouteSelection) -> tuple[HeaderMutation, ...]:
        levels = self._request_levels.get(id(selection.route))
        if levels is None:
            levels = self._request_levels[id(selection.route)] = self._ordered(
                selection.route.request_headers, selection.virtual_host.request_headers,
                self.request_headers)
        return levels

    def response_mutations(self, selection: RouteSelection) -> tuple[HeaderMutation, ...]:
        levels = self._response_levels.get(id(selection.route))
        if levels is None:
            levels = self._response_levels[id(selection.route)] = self._ordered(
                selection.route.response_headers, selection.virtual_host.response_headers,
                self.response_headers)
        return levels

    def _ordered(self, *levels: HeaderMutation) -> tuple[HeaderMutation, ...]:
        ordered = levels[::-1] if self.most_specific_wins else levels
        return tuple(level for level in ordered if level)
