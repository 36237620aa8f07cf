"""AuthorizationPolicy → Envoy RBAC, enforced by the inbound sidecar (Istio's shape).

Which policies apply to a pod: those of the root namespace without a selector
(mesh-wide), those of the pod's namespace without a selector, and those of its
namespace whose `selector.matchLabels` the pod carries.

Semantics (Envoy's RBAC, as Istio lays it out):
- DENY policies are one RBAC filter (action DENY), placed before the ALLOW filter, so a
  request a DENY rule matches is refused whatever an ALLOW rule says.
- No ALLOW policy: no ALLOW filter, everything not denied is allowed. At least one ALLOW
  policy: one RBAC filter (action ALLOW) with all their rules; a request no rule matches
  is refused. An ALLOW policy without `rules` matches nothing (denies everything); a
  rule `{}` matches everything.
- A rule matches when one of its `from` sources, one of its `to` operations and all of
  its `when` conditions match (an absent list matches anything). Within a source or
  operation all fields must match; within a field any value.
- Principals are written as Istio writes them, `<trust-domain>/ns/<ns>/sa/<sa>`, and
  compared with the peer certificate's URI SAN (`spiffe://…`); `*`, `prefix*` and
  `*suffix` work as in Istio. `namespaces` match the `/ns/<ns>/` part of the SAN. Both
  need mTLS: a plaintext peer has no principal, so it matches no principal rule.
- TCP ports get the network RBAC filter; there, an ALLOW rule that needs HTTP
  attributes (methods, paths, hosts, request headers) is dropped (it can never
  match), and a DENY rule loses those conditions (it matches more): both fail closed.
- AUDIT and CUSTOM, and fields outside the list below, are reported as unsupported. A
  policy that cannot be translated fails closed: the workload's inbound denies every
  request (an ALLOW filter with no rules) until the policy is fixed.

Supported: from.source principals/notPrincipals/namespaces/notNamespaces/ipBlocks/
notIpBlocks/remoteIpBlocks/notRemoteIpBlocks; to.operation methods/notMethods/paths/
notPaths/ports/notPorts/hosts/notHosts; when keys request.headers[<name>],
source.namespace, source.principal, source.ip, remote.ip, destination.port.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.rbac.v3.rbac_pb2 import Permission, Principal
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from control.xds.mesh import AuthorizationPolicy
from control.xds.peer_authentication import ROOT_NAMESPACE

HTTP_ONLY: Final = frozenset({"methods", "notMethods", "paths", "notPaths", "hosts", "notHosts"})
_SOURCE_FIELDS: Final = frozenset({
    "principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks",
    "remoteIpBlocks", "notRemoteIpBlocks",
})
_OPERATION_FIELDS: Final = HTTP_ONLY | {"ports", "notPorts"}
_HEADER_KEY: Final = re.compile(r"^request\.headers\[([^\]]+)\]$")


class UnsupportedPolicy(ValueError):
    """A policy field translation cannot express; the message names the field path."""


@dataclass(frozen=True, slots=True)
class WorkloadRbac:
    """The RBAC of one workload: DENY first, then ALLOW (None: no filter of that kind)."""

    deny: rbac_pb2.RBAC | None
    allow: rbac_pb2.RBAC | None


def applicable(
    policies: Iterable[AuthorizationPolicy], namespace: str, labels: Iterable[tuple[str, str]]
) -> tuple[AuthorizationPolicy, ...]:
    pod_labels = dict(labels)
    out = []
    for p in policies:
        if (p.namespace == ROOT_NAMESPACE and p.selector is None) or (p.namespace == namespace and (
            p.selector is None or all(pod_labels.get(k) == v for k, v in p.selector)
        )):
            out.append(p)
    return tuple(out)


def workload_rbac(policies: Iterable[AuthorizationPolicy], http: bool, errors: list[str]) -> WorkloadRbac:
    """The RBAC for one inbound port (HTTP or TCP) of a workload; `policies` are those
    `applicable` to it. Translation errors are appended to `errors` and fail closed."""
    deny: dict[str, rbac_pb2.Policy] = {}
    allow: dict[str, rbac_pb2.Policy] = {}
    any_allow = False
    try:
        for p in policies:
            where = f"AuthorizationPolicy {p.namespace}/{p.name}"
            if p.target_refs:
                raise UnsupportedPolicy(f"{where}: spec.targetRef(s): sidecars are selected by spec.selector")
            if p.action not in ("ALLOW", "DENY"):
                raise UnsupportedPolicy(f"{where}: spec.action {p.action}: not supported (ALLOW and DENY are)")
            any_allow |= p.action == "ALLOW"
            into = allow if p.action == "ALLOW" else deny
            for i, rule in enumerate(p.rules or ()):
                policy = _rule(rule, p.action == "DENY", http, f"{where}: spec.rules[{i}]")
                if policy is not None:
                    into[f"ns[{p.namespace}]-policy[{p.name}]-rule[{i}]"] = policy
    except UnsupportedPolicy as error:
        errors.append(str(error))
        return WorkloadRbac(None, rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW))  # deny everything
    return WorkloadRbac(
        rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies=deny) if deny else None,
        rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=allow) if any_allow else None,
    )


def _rule(rule: Mapping[str, Any], deny: bool, http: bool, where: str) -> rbac_pb2.Policy | None:
    _only(rule, frozenset({"from", "to", "when"}), where)
    principals: list[Principal] = []
    permissions: list[Permission] = []
    sources = rule.get("from")
    if sources is not None:
        principals.append(_or_ids([_source(f.get("source") or {}, f"{where}.from[{j}].source")
                                   for j, f in enumerate(sources)]))
    operations = rule.get("to")
    if operations is not None:
        ops = []
        for j, t in enumerate(operations):
            op = dict(t.get("operation") or {})
            _only(op, _OPERATION_FIELDS, f"{where}.to[{j}].operation")
            if not http and HTTP_ONLY & set(op):
                if not deny:
                    continue  # can never match on a TCP port
                op = {k: v for k, v in op.items() if k not in HTTP_ONLY}
            ops.append(_operation(op, f"{where}.to[{j}].operation"))
        if not ops:
            return None
        permissions.append(_or_rules(ops))
    for j, condition in enumerate(rule.get("when") or ()):
        key = str(condition["key"])
        if not http and _HEADER_KEY.match(key):
            if not deny:
                return None
            continue
        kind, matcher = _condition(condition, f"{where}.when[{j}]")
        (principals if kind == "principal" else permissions).append(matcher)
    return rbac_pb2.Policy(
        principals=[_and_ids(principals) if principals else Principal(any=True)],
        permissions=[_and_rules(permissions) if permissions else Permission(any=True)],
    )


def _only(obj: Mapping[str, Any], supported: frozenset[str], where: str) -> None:
    extra = sorted(set(obj) - supported)
    if extra:
        raise UnsupportedPolicy(f"{where}.{extra[0]}: not supported by tulle-control's RBAC translation")


def _source(source: Mapping[str, Any], where: str) -> Principal:
    _only(source, _SOURCE_FIELDS, where)
    ids: list[Principal] = []
    fields: list[tuple[str, Callable[[str, str], Principal]]] = [
        ("principals", _principal), ("namespaces", _namespace),
        ("ipBlocks", _direct_ip), ("remoteIpBlocks", _remote_ip),
    ]
    for name, build in fields:
        negated = "not" + name[0].upper() + name[1:]
        if name in source:
            ids.append(_or_ids([build(str(v), f"{where}.{name}") for v in source[name]]))
        if negated in source:
            ids.append(Principal(not_id=_or_ids([build(str(v), f"{where}.{negated}") for v in source[negated]])))
    return _and_ids(ids) if ids else Principal(any=True)


def _operation(op: Mapping[str, Any], where: str) -> Permission:
    rules: list[Permission] = []
    fields: list[tuple[str, Callable[[str, str], Permission]]] = [
        ("methods", lambda v, w: Permission(header=_header(":method", v))),
        ("paths", _path), ("ports", _port),
        ("hosts", lambda v, w: Permission(header=_header(":authority", v, ignore_case=True))),
    ]
    for name, build in fields:
        negated = "not" + name[0].upper() + name[1:]
        if name in op:
            rules.append(_or_rules([build(str(v), f"{where}.{name}") for v in op[name]]))
        if negated in op:
            rules.append(Permission(not_rule=_or_rules([build(str(v), f"{where}.{negated}") for v in op[negated]])))
    return _and_rules(rules) if rules else Permission(any=True)


def _condition(condition: Mapping[str, Any], where: str) -> tuple[str, Principal | Permission]:
    key = str(condition["key"])
    values = [str(v) for v in condition.get("values") or ()]
    not_values = [str(v) for v in condition.get("notValues") or ()]
    header = _HEADER_KEY.match(key)
    builders: dict[str, tuple[str, Callable[[str, str], Any]]] = {
        "source.namespace": ("principal", _namespace),
        "source.principal": ("principal", _principal),
        "source.ip": ("principal", _direct_ip),
        "remote.ip": ("principal", _remote_ip),
        "destination.port": ("permission", _port),
    }
    if header:
        name = header.group(1)
        kind, build = "permission", lambda v, w: Permission(header=_header(name, v))
    elif key in builders:
        kind, build = builders[key]
    else:
        raise UnsupportedPolicy(f"{where}.key: {key!r} is not supported")
    combine_or = _or_ids if kind == "principal" else _or_rules
    combine_and = _and_ids if kind == "principal" else _and_rules
    negate = (lambda m: Principal(not_id=m)) if kind == "principal" else (lambda m: Permission(not_rule=m))
    parts = []
    if values:
        parts.append(combine_or([build(v, f"{where}.values") for v in values]))
    if not_values:
        parts.append(negate(combine_or([build(v, f"{where}.notValues") for v in not_values])))
    return kind, combine_and(parts)


def _string(value: str, ignore_case: bool = False) -> string_pb2.StringMatcher:
    """Istio's string match: `*` anything (non-empty), `x*` prefix, `*x` suffix, else exact."""
    if value == "*":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=value[:-1], ignore_case=ignore_case)
    if value.startswith("*"):
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=value, ignore_case=ignore_case)


def _principal(value: str, where: str) -> Principal:
    if value == "*":
        matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    elif value.startswith("*"):
        matcher = string_pb2.StringMatcher(suffix=value[1:])
    else:
        matcher = _string("spiffe://" + value)
    return Principal(authenticated=Principal.Authenticated(principal_name=matcher))


def _namespace(value: str, where: str) -> Principal:
    if value == "*":
        return _principal("*", where)
    pattern = re.escape(value).replace(r"\*", "[^/]*")
    return Principal(authenticated=Principal.Authenticated(principal_name=string_pb2.StringMatcher(
        safe_regex=regex_pb2.RegexMatcher(regex=f"spiffe://[^/]+/ns/{pattern}/sa/[^/]+"))))


def _cidr(value: str, where: str) -> address_pb2.CidrRange:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise UnsupportedPolicy(f"{where}: {value!r} is not an IP address or CIDR") from None
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address), prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen)
    )


def _direct_ip(value: str, where: str) -> Principal:
    return Principal(direct_remote_ip=_cidr(value, where))


def _remote_ip(value: str, where: str) -> Principal:
    return Principal(remote_ip=_cidr(value, where))


def _path(value: str, where: str) -> Permission:
    return Permission(url_path=path_pb2.PathMatcher(path=_string(value)))


def _port(value: str, where: str) -> Permission:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UnsupportedPolicy(f"{where}: {value!r} is not a port number")
    return Permission(destination_port=int(value))


def _header(name: str, value: str, ignore_case: bool = False) -> route_components_pb2.HeaderMatcher:
    return route_components_pb2.HeaderMatcher(name=name, string_match=_string(value, ignore_case))


def _or_ids(ids: list[Principal]) -> Principal:
    return ids[0] if len(ids) == 1 else Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _and_ids(ids: list[Principal]) -> Principal:
    return ids[0] if len(ids) == 1 else Principal(and_ids=rbac_pb2.Principal.Set(ids=ids))


def _or_rules(rules: list[Permission]) -> Permission:
    return rules[0] if len(rules) == 1 else Permission(or_rules=rbac_pb2.Permission.Set(rules=rules))


def _and_rules(rules: list[Permission]) -> Permission:
    return rules[0] if len(rules) == 1 else Permission(and_rules=rbac_pb2.Permission.Set(rules=rules))
