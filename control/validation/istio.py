"""Schemas of the Istio kinds: VirtualService and DestinationRule (networking.istio.io/v1),
PeerAuthentication and AuthorizationPolicy (security.istio.io/v1).

Field names are Istio's API (istio.io/api, the proto field names in lowerCamelCase as
they appear in YAML); the cross-field rules are those of Istio's validation webhook
(`pkg/config/validation`): one of exact/prefix/regex in a string match, a route or a
redirect or a direct response but not two, `provider` exactly when the action is
CUSTOM, `portLevelMtls` only with a workload selector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control.validation.schema import (
    DURATION,
    IP_OR_CIDR,
    PORT,
    Bool,
    Checked,
    Errors,
    Int,
    Labels,
    ListOf,
    MapOf,
    Node,
    Num,
    Opaque,
    Str,
    forbidden,
    invalid,
    obj,
    required,
)
from control.validation.schema import OneOf as one_of

STRING_MATCH = obj(exactly_one=[("exact", "prefix", "regex")], exact=Str(), prefix=Str(), regex=Str())
PORT_SELECTOR = obj(number=PORT)
PERCENT = obj(required=["value"], value=Num(0, 100))
DESTINATION = obj(required=["host"], host=Str(non_empty=True), subset=Str(), port=PORT_SELECTOR)
HEADER_OPERATIONS = obj(set=MapOf(Str()), add=MapOf(Str()), remove=ListOf(Str()))
HEADERS = obj(request=HEADER_OPERATIONS, response=HEADER_OPERATIONS)
WORKLOAD_SELECTOR = obj(matchLabels=Labels())


HTTP_MATCH = obj(
    name=Str(),
    uri=STRING_MATCH,
    scheme=STRING_MATCH,
    method=STRING_MATCH,
    authority=STRING_MATCH,
    headers=MapOf(STRING_MATCH),
    port=PORT,
    sourceLabels=Labels(),
    gateways=ListOf(Str()),
    queryParams=MapOf(STRING_MATCH),
    ignoreUriCase=Bool(),
    withoutHeaders=MapOf(STRING_MATCH),
    sourceNamespace=Str(),
    statPrefix=Str(),
)
HTTP_ROUTE_DESTINATION = obj(required=["destination"], destination=DESTINATION, weight=Int(0), headers=HEADERS)
ROUTE_DESTINATION = obj(required=["destination"], destination=DESTINATION, weight=Int(0))


def _http_route(route: Mapping[str, Any], path: str, errors: Errors) -> None:
    actions = [k for k in ("route", "redirect", "directResponse", "delegate") if route.get(k)]
    if not actions:
        errors.append(required(path, "must specify one of route, redirect, directResponse or delegate"))
    elif len(actions) > 1:
        errors.append(forbidden(path, f"may not specify both {actions[0]} and {actions[1]}"))


HTTP_ROUTE = obj(
    name=Str(),
    match=ListOf(HTTP_MATCH),
    route=ListOf(HTTP_ROUTE_DESTINATION),
    redirect=obj(
        exclusive=[("port", "derivePort"), ("uri", "prefixRewrite")],
        uri=Str(), authority=Str(), port=PORT, derivePort=one_of("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"),
        scheme=Str(), redirectCode=Int(300, 399), prefixRewrite=Str(),
    ),
    directResponse=obj(
        required=["status"], status=Int(200, 599),
        body=obj(exactly_one=[("string", "bytes")], string=Str(), bytes=Str()),
    ),
    delegate=obj(required=["name"], name=Str(non_empty=True), namespace=Str()),
    rewrite=obj(
        exclusive=[("uri", "uriRegexRewrite")],
        uri=Str(), authority=Str(), uriRegexRewrite=obj(required=["match", "rewrite"], match=Str(), rewrite=Str()),
    ),
    timeout=DURATION,
    retries=obj(
        attempts=Int(0), perTryTimeout=DURATION, retryOn=Str(), retryRemoteLocalities=Bool(),
        retryIgnorePreviousHosts=Bool(), backoff=DURATION,
    ),
    fault=obj(
        delay=obj(exactly_one=[("fixedDelay", "exponentialDelay")], fixedDelay=DURATION,
                  exponentialDelay=DURATION, percentage=PERCENT, percent=Int(0, 100)),
        abort=obj(exactly_one=[("httpStatus", "grpcStatus", "http2Error")], httpStatus=Int(200, 599),
                  grpcStatus=Str(), http2Error=Str(), percentage=PERCENT),
    ),
    mirror=DESTINATION,
    mirrors=ListOf(obj(required=["destination"], destination=DESTINATION, percentage=PERCENT)),
    mirrorPercentage=PERCENT,
    mirrorPercent=Int(0, 100),
    corsPolicy=obj(
        allowOrigins=ListOf(STRING_MATCH), allowOrigin=ListOf(Str()), allowMethods=ListOf(Str()),
        allowHeaders=ListOf(Str()), exposeHeaders=ListOf(Str()), maxAge=DURATION,
        allowCredentials=Bool(), unmatchedPreflights=one_of("UNSPECIFIED", "FORWARD", "IGNORE"),
    ),
    headers=HEADERS,
    checks=[_http_route],
)
L4_MATCH = dict(
    destinationSubnets=ListOf(IP_OR_CIDR), port=PORT, sourceSubnet=IP_OR_CIDR, sourceLabels=Labels(),
    gateways=ListOf(Str()), sourceNamespace=Str(),
)
VIRTUAL_SERVICE_SPEC = obj(
    required=["hosts"],
    hosts=ListOf(Str(non_empty=True), min_items=1),
    gateways=ListOf(Str()),
    http=ListOf(HTTP_ROUTE),
    tls=ListOf(obj(
        required=["match"],
        match=ListOf(obj(required=["sniHosts"], sniHosts=ListOf(Str(), min_items=1), **L4_MATCH), min_items=1),
        route=ListOf(ROUTE_DESTINATION),
    )),
    tcp=ListOf(obj(match=ListOf(obj(**L4_MATCH)), route=ListOf(ROUTE_DESTINATION))),
    exportTo=ListOf(Str()),
)

# --- DestinationRule -------------------------------------------------------------------

LOAD_BALANCER = obj(
    exclusive=[("simple", "consistentHash")],
    simple=one_of("UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN"),
    consistentHash=obj(
        exactly_one=[("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")],
        exclusive=[("ringHash", "maglev", "minimumRingSize")],
        httpHeaderName=Str(),
        httpCookie=obj(required=["name"], name=Str(), path=Str(), ttl=DURATION,
                       attributes=ListOf(obj(required=["name"], name=Str(non_empty=True), value=Str()))),
        useSourceIp=Bool(),
        httpQueryParameterName=Str(),
        ringHash=obj(minimumRingSize=Int(0)),
        maglev=obj(tableSize=Int(0)),
        minimumRingSize=Int(0),
    ),
    localityLbSetting=obj(
        enabled=Bool(),
        distribute=ListOf(obj(**{"from": Str()}, to=MapOf(Int(0, 100)))),
        failover=ListOf(obj(**{"from": Str()}, to=Str())),
        failoverPriority=ListOf(Str()),
    ),
    zoneAwareLbSetting=obj(
        enabled=Bool(),
        failover=ListOf(obj(**{"from": Str()}, to=Str())),
        failoverPriority=ListOf(Str()),
        minClusterSize=Int(0),
    ),
    warmupDurationSecs=DURATION,
    warmup=obj(duration=DURATION, minimumPercent=Num(0, 100), aggression=Num(0, 1e9)),
)
CONNECTION_POOL = obj(
    tcp=obj(
        maxConnections=Int(0), connectTimeout=DURATION, maxConnectionDuration=DURATION, idleTimeout=DURATION,
        tcpKeepalive=obj(probes=Int(0), time=DURATION, interval=DURATION),
    ),
    http=obj(
        http1MaxPendingRequests=Int(0), http2MaxRequests=Int(0), maxRequestsPerConnection=Int(0),
        maxRetries=Int(0), idleTimeout=DURATION, h2UpgradePolicy=one_of("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"),
        useClientProtocol=Bool(), maxConcurrentStreams=Int(0),
        http2KeepAlive=obj(interval=DURATION, timeout=DURATION),
    ),
)
OUTLIER_DETECTION = obj(
    splitExternalLocalOriginErrors=Bool(),
    consecutiveLocalOriginFailures=Int(0),
    consecutiveGatewayErrors=Int(0),
    consecutive5xxErrors=Int(0),
    consecutiveErrors=Int(0),
    interval=DURATION,
    baseEjectionTime=DURATION,
    maxEjectionPercent=Int(0, 100),
    minHealthPercent=Int(0, 100),
    outlierDetectionHttpErrorCodes=ListOf(Int(100, 599)),
)
def _client_tls(tls: Mapping[str, Any], path: str, errors: Errors) -> None:
    """What Tulle's proxies can do: certificates are files on the proxy's host (Tulle has
    no Kubernetes Secrets for `credentialName` to name); MUTUAL needs both of the client's."""
    if tls.get("credentialName"):
        errors.append(forbidden(f"{path}.credentialName", "not supported: Tulle reads certificates from files "
                                "(clientCertificate, privateKey, caCertificates)"))
    if tls.get("mode") == "MUTUAL":
        for field in ("clientCertificate", "privateKey"):
            if not tls.get(field):
                errors.append(required(f"{path}.{field}", "required when mode is MUTUAL"))


CLIENT_TLS = obj(
    mode=one_of("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"),
    **dict.fromkeys(("clientCertificate", "privateKey", "caCertificates", "credentialName", "sni", "caCrl"), Str()),
    subjectAltNames=ListOf(Str()),
    insecureSkipVerify=Bool(),
    checks=[_client_tls],
)
_POLICY_PARTS: dict[str, Node] = {
    "loadBalancer": LOAD_BALANCER,
    "connectionPool": CONNECTION_POOL,
    "outlierDetection": OUTLIER_DETECTION,
    "tls": CLIENT_TLS,
}
TRAFFIC_POLICY = obj(
    portLevelSettings=ListOf(obj(required=["port"], port=PORT_SELECTOR, **_POLICY_PARTS), max_items=4096),
    tunnel=obj(required=["targetHost", "targetPort"], protocol=one_of("CONNECT", "POST"), targetHost=Str(non_empty=True),
               targetPort=PORT),
    proxyProtocol=obj(version=one_of("V1", "V2")),
    retryBudget=obj(percent=Num(0, 100), minRetryConcurrency=Int(0), budgetInterval=DURATION),
    **_POLICY_PARTS,
)


def _unique_subsets(spec: Mapping[str, Any], path: str, errors: Errors) -> None:
    seen: set[str] = set()
    for i, subset in enumerate(spec.get("subsets") or []):
        if subset["name"] in seen:
            errors.append(invalid(f"{path}.subsets[{i}].name", subset["name"], "duplicate subset name"))
        seen.add(subset["name"])


DESTINATION_RULE_SPEC = obj(
    required=["host"],
    host=Str(non_empty=True),
    trafficPolicy=TRAFFIC_POLICY,
    subsets=ListOf(obj(
        required=["name"],
        name=Str(non_empty=True),
        labels=Labels(),
        trafficPolicy=TRAFFIC_POLICY,
    )),
    exportTo=ListOf(Str()),
    workloadSelector=WORKLOAD_SELECTOR,
    checks=[_unique_subsets],
)

# --- PeerAuthentication, AuthorizationPolicy -------------------------------------------

MTLS = obj(mode=one_of("UNSET", "DISABLE", "PERMISSIVE", "STRICT"))


def _port_key_reason(text: str) -> str | None:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return "must be a port number between 1 and 65535"
    return None


def _peer_authentication(spec: Mapping[str, Any], path: str, errors: Errors) -> None:
    if spec.get("portLevelMtls") and not (spec.get("selector") or {}).get("matchLabels"):
        errors.append(forbidden(f"{path}.portLevelMtls", "requires a workload selector (spec.selector.matchLabels)"))


PEER_AUTHENTICATION_SPEC = obj(
    selector=WORKLOAD_SELECTOR,
    mtls=MTLS,
    portLevelMtls=MapOf(MTLS, key=Checked(_port_key_reason)),
    checks=[_peer_authentication],
)
STRINGS = ListOf(Str())
PORT_STRINGS = ListOf(Checked(_port_key_reason))
SOURCE = obj(
    **dict.fromkeys(("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                     "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "trustDomains",
                     "notTrustDomains"), STRINGS),
    **dict.fromkeys(("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"), ListOf(IP_OR_CIDR)),
)
OPERATION = obj(
    **dict.fromkeys(("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"), STRINGS),
    ports=PORT_STRINGS,
    notPorts=PORT_STRINGS,
)


def _condition(condition: Mapping[str, Any], path: str, errors: Errors) -> None:
    if not condition.get("values") and not condition.get("notValues"):
        errors.append(required(path, "must specify values or notValues"))


POLICY_TARGET = obj(required=["kind", "name"], group=Str(), kind=Str(), name=Str(), namespace=Str())


def _authorization_policy(spec: Mapping[str, Any], path: str, errors: Errors) -> None:
    action = spec.get("action", "ALLOW")
    if action == "CUSTOM" and not spec.get("provider"):
        errors.append(required(f"{path}.provider", "must be set when action is CUSTOM"))
    if action != "CUSTOM" and spec.get("provider"):
        errors.append(invalid(f"{path}.provider", spec["provider"], "may only be set when action is CUSTOM"))
    if action == "AUDIT" and spec.get("rules") is None:
        errors.append(required(f"{path}.rules", "an AUDIT policy needs rules"))


AUTHORIZATION_POLICY_SPEC = obj(
    exclusive=[("selector", "targetRef", "targetRefs")],
    selector=WORKLOAD_SELECTOR,
    targetRef=POLICY_TARGET,
    targetRefs=ListOf(POLICY_TARGET),
    rules=ListOf(obj(
        **{"from": ListOf(obj(required=["source"], source=SOURCE))},
        to=ListOf(obj(required=["operation"], operation=OPERATION)),
        when=ListOf(obj(required=["key"], key=Str(non_empty=True), values=STRINGS, notValues=STRINGS,
                        checks=[_condition])),
    )),
    action=one_of("ALLOW", "DENY", "AUDIT", "CUSTOM"),
    provider=obj(required=["name"], name=Str(non_empty=True)),
    checks=[_authorization_policy],
)
ISTIO_STATUS = Opaque()

BODIES: dict[str, dict[str, Node]] = {
    "VirtualService": {"spec": VIRTUAL_SERVICE_SPEC, "status": ISTIO_STATUS},
    "DestinationRule": {"spec": DESTINATION_RULE_SPEC, "status": ISTIO_STATUS},
    "PeerAuthentication": {"spec": PEER_AUTHENTICATION_SPEC, "status": ISTIO_STATUS},
    "AuthorizationPolicy": {"spec": AUTHORIZATION_POLICY_SPEC, "status": ISTIO_STATUS},
}
SPEC_REQUIRED = frozenset({"VirtualService", "DestinationRule"})

