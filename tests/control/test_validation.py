"""Validation at the edge: every kind's valid documents pass; bad ones are rejected with
the field's path and the reason, in kubectl's words."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from control.validation import InvalidObjectError, validate


def doc(kind: str, api_version: str, spec: Any = None, name: str = "x", **top: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}
    if spec is not None:
        document["spec"] = spec
    document.update(top)
    return document


def netpol(spec: Any, **top: Any) -> dict[str, Any]:
    return doc("NetworkPolicy", "networking.k8s.io/v1", spec, **top)


def ingress_port(port: Any) -> dict[str, Any]:
    return netpol({"podSelector": {}, "ingress": [{"ports": [port]}]})


def anp(spec: Any, kind: str = "AdminNetworkPolicy", name: str = "x") -> dict[str, Any]:
    return doc(kind, "policy.networking.k8s.io/v1alpha1", spec, name=name)


ANP_SUBJECT: dict[str, Any] = {"namespaces": {}}


def vs(spec: Any) -> dict[str, Any]:
    return doc("VirtualService", "networking.istio.io/v1", spec)


def dr(spec: Any) -> dict[str, Any]:
    return doc("DestinationRule", "networking.istio.io/v1", spec)


def pa(spec: Any) -> dict[str, Any]:
    return doc("PeerAuthentication", "security.istio.io/v1", spec)


def ap(spec: Any) -> dict[str, Any]:
    return doc("AuthorizationPolicy", "security.istio.io/v1", spec)


def pod(spec: Any, **top: Any) -> dict[str, Any]:
    return doc("Pod", "v1", spec, **top)


def svc(spec: Any, **top: Any) -> dict[str, Any]:
    return doc("Service", "v1", spec, **top)


CONTAINER = {"name": "app", "image": "nginx"}
ROUTE = [{"destination": {"host": "reviews"}}]

VALID = [
    doc("Namespace", "v1"),
    doc("Node", "v1", {"podCIDR": "10.244.1.0/24"}, status={"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}),
    pod({"containers": [{**CONTAINER, "ports": [{"name": "http", "containerPort": 80}], "env": [{"name": "A"}]}]},
        status={"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]}),
    svc({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
    doc("Endpoints", "v1", subsets=[{"addresses": [{"ip": "10.1.1.1"}], "ports": [{"port": 80}]}]),
    netpol({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                                  {"namespaceSelector": {"matchLabels": {"project": "myproject"}},
                                   "podSelector": {"matchLabels": {"role": "frontend"}}}],
                         "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": "dns", "protocol": "UDP"}]}]}),
    anp({"priority": 10, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}},
         "ingress": [{"name": "deny", "action": "Deny", "from": [{"namespaces": {}}],
                      "ports": [{"portNumber": {"protocol": "TCP", "port": 80}}, {"namedPort": "http"},
                                {"portRange": {"start": 1000, "end": 2000}}]}],
         "egress": [{"action": "Pass", "to": [{"networks": ["10.0.0.0/8"]}]}]}),
    anp({"subject": ANP_SUBJECT, "ingress": [{"action": "Allow", "from": [{"namespaces": {}}]}]},
        kind="BaselineAdminNetworkPolicy", name="default"),
    vs({"hosts": ["reviews"], "http": [
        {"match": [{"uri": {"prefix": "/v1"}, "headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"destination": {"host": "reviews", "subset": "v2"}, "weight": 75},
                   {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 25}],
         "timeout": "10s", "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"},
         "fault": {"delay": {"percentage": {"value": 0.1}, "fixedDelay": "5s"}}}],
        "tcp": [{"match": [{"port": 27017}], "route": [{"destination": {"host": "mongo"}}]}]}),
    dr({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                                             "connectionPool": {"tcp": {"maxConnections": 100}},
                                             "outlierDetection": {"consecutive5xxErrors": 7, "interval": "5m",
                                                                  "baseEjectionTime": "15m"}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"},
                     "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}}]}),
    pa({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
    ap({"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"],
                                        "ipBlocks": ["10.0.0.0/8", "1.2.3.4"]}}],
                   "to": [{"operation": {"methods": ["GET"], "paths": ["/info*"], "ports": ["8080"]}}],
                   "when": [{"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]}]}]}),
]


@pytest.mark.parametrize("document", VALID, ids=[d["kind"] for d in VALID])
def test_a_valid_document_of_every_kind_passes(document: dict[str, Any]) -> None:
    assert validate(copy.deepcopy(document)).name == document["kind"]


# (document, the error line it must produce)
BAD: list[tuple[dict[str, Any], str]] = [
    # NetworkPolicy
    (ingress_port({"port": 70000}),
     'The NetworkPolicy "x" is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535'),
    (ingress_port({"port": 0}), "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535"),
    (ingress_port({"port": 80, "endPort": 79}),
     "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`"),
    (ingress_port({"port": "http", "endPort": 90}),
     "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric"),
    (ingress_port({"endPort": 90}),
     "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified"),
    (ingress_port({"port": "HTTP_PORT"}), 'spec.ingress[0].ports[0].port: Invalid value: "HTTP_PORT"'),
    (ingress_port({"port": 80, "protocol": "ICMP"}),
     'spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"'),
    (ingress_port({"port": True}), "spec.ingress[0].ports[0].port: Invalid value: true: must be of type integer or string"),
    (netpol({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
     'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33": must be a valid CIDR'),
    (netpol({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}),
     "must be a valid CIDR with no host bits set (did you mean 10.0.0.0/8?)"),
    (netpol({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
     'spec.egress[0].to[0].ipBlock.except[0]: Invalid value: "10.1.0.0/24": must be a strict subset of `cidr`'),
    (netpol({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]}),
     "spec.egress[0].to[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`"),
    (netpol({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
     "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"),
    (netpol({"podSelector": {}, "ingress": [{"from": [{}]}]}), "spec.ingress[0].from[0]: Required value: must specify a peer"),
    (netpol({"podSelector": {}, "ingres": []}), "spec.ingres: Unknown field"),
    (netpol({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]}),
     'spec.policyTypes[1]: Unsupported value: "Sideways": supported values: "Ingress", "Egress"'),
    (netpol({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
     "spec.podSelector.matchExpressions[0].values: Invalid value: null: must be non-empty when operator is In"),
    (netpol({"podSelector": {"matchLabels": {"app": "a b"}}}), 'spec.podSelector.matchLabels.app: Invalid value: "a b"'),
    (netpol({"ingress": []}), "spec.podSelector: Required value"),
    (netpol({"podSelector": {}}, name="Bad_Name"), 'metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain'),
    (netpol({"podSelector": []}), "spec.podSelector: Invalid value: []: must be an object, not list"),
    # AdminNetworkPolicy, BaselineAdminNetworkPolicy
    (anp({"priority": 1001, "subject": ANP_SUBJECT}), "spec.priority: Invalid value: 1001: must be between 0 and 1000"),
    (anp({"subject": ANP_SUBJECT}), "spec.priority: Required value"),
    (anp({"priority": 1, "subject": {"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}}),
     "spec.subject: Forbidden: may not specify more than one of namespaces, pods"),
    (anp({"priority": 1, "subject": ANP_SUBJECT, "ingress": [{"action": "Drop", "from": [{"namespaces": {}}]}]}),
     'spec.ingress[0].action: Unsupported value: "Drop": supported values: "Allow", "Deny", "Pass"'),
    (anp({"priority": 1, "subject": ANP_SUBJECT, "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
                                                             "ports": [{"portRange": {"start": 90, "end": 80}}]}]}),
     "spec.egress[0].ports[0].portRange.end: Invalid value: 80: must be greater than or equal to `start`"),
    (anp({"priority": 1, "subject": ANP_SUBJECT, "ingress": [{"action": "Allow", "from": []}]}),
     "spec.ingress[0].from: Required value: must have at least 1 item"),
    (anp({"subject": ANP_SUBJECT, "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]},
         kind="BaselineAdminNetworkPolicy", name="default"),
     'spec.ingress[0].action: Unsupported value: "Pass": supported values: "Allow", "Deny"'),
    (anp({"subject": ANP_SUBJECT}, kind="BaselineAdminNetworkPolicy", name="other"),
     'metadata.name: Invalid value: "other": a BaselineAdminNetworkPolicy must be named "default"'),
    # Pod, Service, Namespace, Node
    (pod({"containers": []}), "spec.containers: Required value: must have at least 1 item"),
    (pod({"containers": [{**CONTAINER, "ports": [{"containerPort": 65536}]}]}),
     "spec.containers[0].ports[0].containerPort: Invalid value: 65536: must be between 1 and 65535"),
    (pod({"containers": [CONTAINER, CONTAINER]}), 'spec.containers[1].name: Duplicate value: "app"'),
    (pod({"containers": [{**CONTAINER, "ports": [{"name": "http", "containerPort": 80}]},
                         {"name": "side", "ports": [{"name": "http", "containerPort": 81}]}]}),
     'spec.containers[1].ports[0].name: Duplicate value: "http"'),
    (pod({"containers": [CONTAINER]}, status={"podIP": "10.244.1.300"}),
     'status.podIP: Invalid value: "10.244.1.300": must be a valid IP address'),
    (pod({"containers": [{**CONTAINER, "imagePullPolicyy": "Always"}]}), "spec.containers[0].imagePullPolicyy: Unknown field"),
    (svc({"ports": [{"port": 80}, {"port": 443}]}),
     "spec.ports[0].name: Required value: must be set when a service has more than one port"),
    (svc({"ports": [{"port": 80, "targetPort": 0}]}), "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535"),
    (svc({"ports": [{"port": 80}], "type": "Magic"}), 'spec.type: Unsupported value: "Magic"'),
    (svc({"type": "ExternalName"}), "spec.externalName: Required value: must be set when type is ExternalName"),
    (svc({"ports": [{"port": "80"}]}), 'spec.ports[0].port: Invalid value: "80": must be of type integer, not string'),
    (svc({"ports": [{"port": 80}]}, name="web.app"), 'metadata.name: Invalid value: "web.app": a lowercase RFC 1123 label'),
    (doc("Node", "v1", {"podCIDR": "10.244.1.0/40"}), 'spec.podCIDR: Invalid value: "10.244.1.0/40"'),
    (doc("Namespace", "v1", name="-bad-"), 'metadata.name: Invalid value: "-bad-"'),
    # VirtualService
    (vs({"http": [{"route": ROUTE}]}), "spec.hosts: Required value"),
    (vs({"hosts": ["r"], "http": [{"route": ROUTE, "redirect": {"uri": "/x"}}]}),
     "spec.http[0]: Forbidden: may not specify both route and redirect"),
    (vs({"hosts": ["r"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/"}}], "route": ROUTE}]}),
     "spec.http[0].match[0].uri: Forbidden: may not specify more than one of exact, prefix, regex"),
    (vs({"hosts": ["r"], "http": [{"route": ROUTE, "timeout": "10 seconds"}]}),
     'spec.http[0].timeout: Invalid value: "10 seconds": must be a duration'),
    (vs({"hosts": ["r"], "http": [{"route": [{"destination": {"subset": "v1"}}]}]}),
     "spec.http[0].route[0].destination.host: Required value"),
    (vs({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r", "port": {"number": 99999}}}]}]}),
     "spec.http[0].route[0].destination.port.number: Invalid value: 99999"),
    (vs({"hosts": ["r"], "http": [{"route": ROUTE, "fault": {"abort": {"httpStatus": 700}}}]}),
     "spec.http[0].fault.abort.httpStatus: Invalid value: 700: must be between 200 and 599"),
    # DestinationRule
    (dr({"subsets": [{"name": "v1"}]}), "spec.host: Required value"),
    (dr({"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}),
     'spec.trafficPolicy.loadBalancer.simple: Unsupported value: "FASTEST"'),
    (dr({"host": "r", "subsets": [{"name": "v1"}, {"name": "v1"}]}),
     'spec.subsets[1].name: Invalid value: "v1": duplicate subset name'),
    (dr({"host": "r", "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 150}}}),
     "spec.trafficPolicy.outlierDetection.maxEjectionPercent: Invalid value: 150: must be between 0 and 100"),
    (dr({"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL_TLS"}}}),
     'spec.trafficPolicy.tls.mode: Unsupported value: "MUTUAL_TLS"'),
    # PeerAuthentication
    (pa({"mtls": {"mode": "STRICTEST"}}), 'spec.mtls.mode: Unsupported value: "STRICTEST"'),
    (pa({"portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
     "spec.portLevelMtls: Forbidden: requires a workload selector"),
    (pa({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"http": {"mode": "DISABLE"}}}),
     'spec.portLevelMtls[http]: Invalid value: "http": must be a port number between 1 and 65535'),
    # AuthorizationPolicy
    (ap({"action": "CUSTOM", "rules": [{}]}), "spec.provider: Required value: must be set when action is CUSTOM"),
    (ap({"action": "DENY", "provider": {"name": "ext"}}),
     'spec.provider: Invalid value: {"name":"ext"}: may only be set when action is CUSTOM'),
    (ap({"action": "REJECT"}), 'spec.action: Unsupported value: "REJECT": supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"'),
    (ap({"rules": [{"when": [{"key": "source.ip"}]}]}),
     "spec.rules[0].when[0]: Required value: must specify values or notValues"),
    (ap({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/40"]}}]}]}),
     'spec.rules[0].from[0].source.ipBlocks[0]: Invalid value: "10.0.0.0/40"'),
    (ap({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}),
     'spec.rules[0].to[0].operation.ports[0]: Invalid value: "http": must be a port number'),
    # Any kind
    ({"apiVersion": "networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "x"}}, 'kind: Unsupported value: "Gateway"'),
    (doc("VirtualService", "networking.istio.io/v1alpha3", {"hosts": ["r"]}),
     'apiVersion: Unsupported value: "networking.istio.io/v1alpha3": supported values: "networking.istio.io/v1"'),
    ({"apiVersion": "v1", "kind": "Namespace", "metadata": {}}, "metadata.name: Required value"),
    ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}, "specs": {}}, "specs: Unknown field"),
]


@pytest.mark.parametrize(("document", "expected"), BAD, ids=[f"{d.get('kind')}-{i}" for i, (d, _) in enumerate(BAD)])
def test_a_bad_document_is_rejected_with_the_field_path_and_reason(document: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidObjectError) as caught:
        validate(document)
    assert expected in str(caught.value)


def test_the_table_covers_every_kind_of_the_resource_table() -> None:
    kinds = {document.get("kind") for document, _ in BAD}
    assert kinds >= {"Namespace", "Pod", "Service", "NetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy",
                     "VirtualService", "DestinationRule", "PeerAuthentication", "AuthorizationPolicy"}
    assert len(BAD) >= 30


def test_every_problem_of_a_document_is_reported_at_once() -> None:
    document = netpol({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}, {"port": 1, "protocol": "X"}]}], "x": 1})
    with pytest.raises(InvalidObjectError) as caught:
        validate(document)
    assert len(caught.value.errors) == 3
    assert str(caught.value).startswith('The NetworkPolicy "x" is invalid: \n* ')


def test_stored_but_uninterpreted_pod_fields_are_accepted_as_given() -> None:
    document = pod({"containers": [{**CONTAINER, "resources": {"limits": {"cpu": "1"}}, "livenessProbe": {"any": ["thing"]}}],
                    "volumes": [{"name": "v", "emptyDir": {}}]})
    assert validate(document).name == "Pod"
