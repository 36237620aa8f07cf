"""Role-based access control: Envoy's RBAC filters (HTTP and network), evaluated the way
Envoy evaluates them.

Rules (envoy.config.rbac.v3, envoy.extensions.filters.{http,network}.rbac.v3):
- A policy matches when any of its permissions and any of its principals match.
- action ALLOW: allowed only if some policy matches (so ALLOW with no policies denies
  everything); action DENY: denied if some policy matches. A filter without `rules`
  enforces nothing. Filters run in order, so a DENY filter placed before the ALLOW filter
  wins (Istio's layout: DENY before ALLOW).
- Principals: any, authenticated (principal_name against the peer certificate's URI SANs;
  without a name, any verified peer certificate), direct_remote_ip, remote_ip (the
  downstream address; tulle-proxy trusts no x-forwarded-for hops), header, url_path,
  and_ids, or_ids, not_id.
- Permissions: any, header, url_path (the path without query), destination_ip,
  destination_port, destination_port_range, requested_server_name, and_rules, or_rules,
  not_rule. On a network filter there are no headers or path: those never match.
- A denied HTTP request gets 403 "RBAC: access denied"; a denied TCP connection is closed.
  Stats: `rbac.allowed`, `rbac.denied` (HTTP under `http.<prefix>.`, network under
  `<stat_prefix>`).
- Anything else (conditions, matchers, shadow rules, metadata) is refused with its path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from envoy.config.rbac.v3.rbac_pb2 import RBAC, Permission, Principal
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC as HttpRbac
from envoy.extensions.filters.network.rbac.v3.rbac_pb2 import RBAC as NetworkRbac
from google.protobuf.any_pb2 import Any

from proxy.config_error import ConfigError, reject_unsupported
from proxy.http.headers import Headers
from proxy.proto_config import join
from proxy.router.matchers import HeaderMatch, StringMatch

RBAC_HTTP_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_NETWORK_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
DENIED_BODY = b"RBAC: access denied"


@dataclass(slots=True)
class Subject:
    """What RBAC may look at: the connection, and for HTTP the request."""

    remote_ip: str
    destination_ip: str
    destination_port: int
    peer_uris: tuple[str, ...] = ()
    authenticated: bool = False
    server_name: str = ""
    headers: Headers | None = None
    pseudo: dict[str, str] = field(default_factory=dict)
    path: str = ""        # without the query string; "" on a network filter


Rule = Callable[[Subject], bool]


def _any(_subject: Subject) -> bool:
    return True


def _cidr(message: object, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    reject_unsupported(message, path, ("address_prefix", "prefix_len"))
    try:
        address = ipaddress.ip_address(message.address_prefix)  # type: ignore[attr-defined]
        length = message.prefix_len.value if message.HasField("prefix_len") else address.max_prefixlen  # type: ignore[attr-defined]
        return ipaddress.ip_network(f"{address}/{length}", strict=False)
    except ValueError as error:
        raise ConfigError(path, str(error)) from None


def _in(network: ipaddress.IPv4Network | ipaddress.IPv6Network, attribute: str) -> Rule:
    def test(subject: Subject) -> bool:
        try:
            return ipaddress.ip_address(getattr(subject, attribute)) in network
        except ValueError:
            return False
    return test


def _header(message: object, path: str) -> Rule:
    match = HeaderMatch.from_proto(message, path)

    def test(subject: Subject) -> bool:
        return subject.headers is not None and match.matches(subject.headers, subject.pseudo)
    return test


def _url_path(message: object, path: str) -> Rule:
    reject_unsupported(message, path, ("path",))
    if not message.HasField("path"):  # type: ignore[attr-defined]
        raise ConfigError(join(path, "path"), "is required")
    match = StringMatch.from_proto(message.path, join(path, "path"))  # type: ignore[attr-defined]

    def test(subject: Subject) -> bool:
        return subject.headers is not None and match(subject.path)
    return test


def _all(rules: Sequence[Rule]) -> Rule:
    return lambda subject: all(rule(subject) for rule in rules)


def _one_of(rules: Sequence[Rule]) -> Rule:
    return lambda subject: any(rule(subject) for rule in rules)


def _negate(rule: Rule) -> Rule:
    return lambda subject: not rule(subject)


def permission(message: Permission, path: str) -> Rule:
    kind = message.WhichOneof("rule")
    here = join(path, kind or "rule")
    if kind == "any":
        return _any
    if kind in ("and_rules", "or_rules"):
        rules = [permission(rule, f"{here}.rules[{index}]") for index, rule in enumerate(getattr(message, kind).rules)]
        return _all(rules) if kind == "and_rules" else _one_of(rules)
    if kind == "not_rule":
        return _negate(permission(message.not_rule, here))
    if kind == "header":
        return _header(message.header, here)
    if kind == "url_path":
        return _url_path(message.url_path, here)
    if kind == "destination_ip":
        return _in(_cidr(message.destination_ip, here), "destination_ip")
    if kind == "destination_port":
        port = message.destination_port
        return lambda subject: subject.destination_port == port
    if kind == "destination_port_range":
        start, end = message.destination_port_range.start, message.destination_port_range.end
        return lambda subject: start <= subject.destination_port < end
    if kind == "requested_server_name":
        name = StringMatch.from_proto(message.requested_server_name, here)
        return lambda subject: name(subject.server_name)
    raise ConfigError(here, "not supported by tulle-proxy" if kind else "a rule is required")


def principal(message: Principal, path: str) -> Rule:
    kind = message.WhichOneof("identifier")
    here = join(path, kind or "identifier")
    if kind == "any":
        return _any
    if kind in ("and_ids", "or_ids"):
        ids = [principal(one, f"{here}.ids[{index}]") for index, one in enumerate(getattr(message, kind).ids)]
        return _all(ids) if kind == "and_ids" else _one_of(ids)
    if kind == "not_id":
        return _negate(principal(message.not_id, here))
    if kind == "authenticated":
        reject_unsupported(message.authenticated, here, ("principal_name",))
        if not message.authenticated.HasField("principal_name"):
            return lambda subject: subject.authenticated
        name = StringMatch.from_proto(message.authenticated.principal_name, join(here, "principal_name"))
        return lambda subject: any(name(uri) for uri in subject.peer_uris)
    if kind in ("direct_remote_ip", "remote_ip", "source_ip"):
        return _in(_cidr(getattr(message, kind), here), "remote_ip")
    if kind == "header":
        return _header(message.header, here)
    if kind == "url_path":
        return _url_path(message.url_path, here)
    raise ConfigError(here, "not supported by tulle-proxy" if kind else "an identifier is required")


@dataclass(frozen=True, slots=True)
class RbacConfig:
    """One RBAC filter; `policies` None: no rules, nothing enforced."""

    allow: bool
    policies: tuple[tuple[str, Rule, Rule], ...] | None
    stat_prefix: str = ""

    @classmethod
    def from_rules(cls, message: RBAC, path: str, stat_prefix: str) -> RbacConfig:
        reject_unsupported(message, path, ("action", "policies"))
        if message.action not in (RBAC.ALLOW, RBAC.DENY):
            raise ConfigError(join(path, "action"), f"{RBAC.Action.Name(message.action)} is not supported "
                              "(ALLOW, DENY)")
        policies = []
        for name in sorted(message.policies):
            policy = message.policies[name]
            here = f"{path}.policies[{name}]"
            reject_unsupported(policy, here, ("permissions", "principals"))
            permissions = [permission(one, f"{here}.permissions[{index}]")
                           for index, one in enumerate(policy.permissions)]
            principals = [principal(one, f"{here}.principals[{index}]")
                          for index, one in enumerate(policy.principals)]
            policies.append((name, _one_of(permissions), _one_of(principals)))
        return cls(message.action == RBAC.ALLOW, tuple(policies), stat_prefix)

    @classmethod
    def http_from_any(cls, config: Any, path: str) -> RbacConfig:
        message = HttpRbac()
        config.Unpack(message)
        reject_unsupported(message, path, ("rules", "rules_stat_prefix"))
        if not message.HasField("rules"):
            return cls(True, None, message.rules_stat_prefix)
        return cls.from_rules(message.rules, join(path, "rules"), message.rules_stat_prefix)

    @classmethod
    def network_from_any(cls, config: Any, path: str) -> RbacConfig:
        message = NetworkRbac()
        config.Unpack(message)
        reject_unsupported(message, path, ("rules", "stat_prefix"))
        if not message.stat_prefix:
            raise ConfigError(join(path, "stat_prefix"), "must not be empty")
        if not message.HasField("rules"):
            return cls(True, None, message.stat_prefix)
        return cls.from_rules(message.rules, join(path, "rules"), message.stat_prefix)

    def allows(self, subject: Subject) -> bool:
        """This filter's verdict alone."""
        policies = self.policies
        if policies is None:
            return True
        matched = any(permissions(subject) and principals(subject) for _, permissions, principals in policies)
        return matched if self.allow else not matched


@dataclass(slots=True)
class RbacStats:
    GAUGES = frozenset[str]()
    allowed: int = 0
    denied: int = 0


def allowed(filters: Sequence[RbacConfig], subject: Subject, stats: RbacStats) -> bool:
    """Run the filters in order; the first that denies decides (each filter counts, as
    Envoy's filters count into the same `rbac.allowed` / `rbac.denied`)."""
    for config in filters:
        if config.allows(subject):
            stats.allowed += 1
        else:
            stats.denied += 1
            return False
    return True
