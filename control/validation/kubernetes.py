"""Schemas of the Kubernetes kinds: core v1 (Namespace, Node, Pod, Service, Endpoints),
NetworkPolicy (networking.k8s.io/v1) and the Network Policy API's AdminNetworkPolicy
and BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1).

Field names and constraints are the upstream API's (k8s.io/api types and
`pkg/apis/*/validation`, and the network-policy-api CRDs). Large parts of PodSpec that
Tulle does not interpret (volumes, probes, resources …) are declared `Opaque`: stored
unchanged, but a field that PodSpec does not have is still rejected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from control.validation.schema import (
    CIDR,
    IP,
    LABEL_NAME,
    PORT,
    PORT_NAME,
    PROTOCOL,
    Bool,
    Errors,
    Int,
    IntOrStr,
    Labels,
    ListOf,
    Node,
    Opaque,
    Selector,
    Str,
    duplicate,
    forbidden,
    invalid,
    obj,
    required,
)
from control.validation.schema import OneOf as one_of

# --- NetworkPolicy ---------------------------------------------------------------------


def _network_policy_port(port: Mapping[str, Any], path: str, errors: Errors) -> None:
    end = port.get("endPort")
    if end is None:
        return
    number = port.get("port")
    if number is None:
        errors.append(invalid(f"{path}.endPort", end, "may not be specified when `port` is not specified"))
    elif isinstance(number, str):
        errors.append(invalid(f"{path}.endPort", end, "may not be specified when `port` is non-numeric"))
    elif end < number:
        errors.append(invalid(f"{path}.endPort", end, "must be greater than or equal to `port`"))


def _ip_block(block: Mapping[str, Any], path: str, errors: Errors) -> None:
    cidr = ipaddress.ip_network(block["cidr"])
    for i, text in enumerate(block.get("except") or []):
        excluded = ipaddress.ip_network(text)
        if excluded.version != cidr.version or not excluded.subnet_of(cidr) or excluded == cidr:  # type: ignore[arg-type]
            errors.append(invalid(f"{path}.except[{i}]", text, "must be a strict subset of `cidr`"))


def _network_policy_peer(peer: Mapping[str, Any], path: str, errors: Errors) -> None:
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if peer.get(k) is not None]
    if not present:
        errors.append(required(path, "must specify a peer"))
    elif "ipBlock" in present and len(present) > 1:
        errors.append(forbidden(path, "may not specify both ipBlock and another peer"))


NETWORK_POLICY_PORT = obj(
    protocol=PROTOCOL,
    port=IntOrStr(PORT, PORT_NAME),
    endPort=PORT,
    checks=[_network_policy_port],
)
NETWORK_POLICY_PEER = obj(
    podSelector=Selector(),
    namespaceSelector=Selector(),
    ipBlock=obj(cidr=CIDR, required=["cidr"], checks=[_ip_block], **{"except": ListOf(CIDR)}),
    checks=[_network_policy_peer],
)
NETWORK_POLICY_SPEC = obj(
    required=["podSelector"],
    podSelector=Selector(),
    policyTypes=ListOf(one_of("Ingress", "Egress"), max_items=2, unique=True),
    ingress=ListOf(obj(**{"from": ListOf(NETWORK_POLICY_PEER)}, ports=ListOf(NETWORK_POLICY_PORT))),
    egress=ListOf(obj(to=ListOf(NETWORK_POLICY_PEER), ports=ListOf(NETWORK_POLICY_PORT))),
)

# --- AdminNetworkPolicy / BaselineAdminNetworkPolicy ----------------------------------


def _port_range(port_range: Mapping[str, Any], path: str, errors: Errors) -> None:
    if port_range["end"] < port_range["start"]:
        errors.append(invalid(f"{path}.end", port_range["end"], "must be greater than or equal to `start`"))


NAMESPACED_POD = obj(required=["namespaceSelector", "podSelector"], namespaceSelector=Selector(), podSelector=Selector())
ANP_PORT = obj(
    exactly_one=[("portNumber", "namedPort", "portRange")],
    portNumber=obj(required=["port"], protocol=PROTOCOL, port=PORT),
    namedPort=PORT_NAME,
    portRange=obj(required=["start", "end"], protocol=PROTOCOL, start=PORT, end=PORT, checks=[_port_range]),
)
ANP_SUBJECT = obj(exactly_one=[("namespaces", "pods")], namespaces=Selector(), pods=NAMESPACED_POD)
ANP_INGRESS_PEER = obj(exactly_one=[("namespaces", "pods")], namespaces=Selector(), pods=NAMESPACED_POD)
ANP_EGRESS_PEER = obj(
    exactly_one=[("namespaces", "pods", "nodes", "networks")],
    namespaces=Selector(),
    pods=NAMESPACED_POD,
    nodes=Selector(),
    networks=ListOf(CIDR, min_items=1, max_items=25, unique=True),
)


def _admin_rules(actions: tuple[str, ...]) -> dict[str, Node]:
    def rule(peers_field: str, peer: Node) -> Node:
        return obj(
            required=["action", peers_field],
            name=Str(max_len=100),
            action=one_of(*actions),
            ports=ListOf(ANP_PORT, min_items=1, max_items=100),
            **{peers_field: ListOf(peer, min_items=1, max_items=100)},
        )

    return {
        "ingress": ListOf(rule("from", ANP_INGRESS_PEER), max_items=100),
        "egress": ListOf(rule("to", ANP_EGRESS_PEER), max_items=100),
    }


ADMIN_NETWORK_POLICY_SPEC = obj(
    required=["priority", "subject"],
    priority=Int(0, 1000),
    subject=ANP_SUBJECT,
    **_admin_rules(("Allow", "Deny", "Pass")),
)
BASELINE_ADMIN_NETWORK_POLICY_SPEC = obj(
    required=["subject"],
    subject=ANP_SUBJECT,
    **_admin_rules(("Allow", "Deny")),
)
# The upstream CRDs' status (conditions) is written by the implementation, not users.
POLICY_STATUS = obj(conditions=ListOf(Opaque()))

# --- Pod -------------------------------------------------------------------------------


def _unique_names(items_field: str) -> Any:
    def rule(value: Mapping[str, Any], path: str, errors: Errors) -> None:
        seen: set[str] = set()
        for i, item in enumerate(value.get(items_field) or []):
            name = item.get("name")
            if name is None:
                continue
            if name in seen:
                errors.append(duplicate(f"{path}.{items_field}[{i}].name", name))
            seen.add(name)

    return rule


CONTAINER_PORT = obj(
    required=["containerPort"],
    name=PORT_NAME,
    containerPort=PORT,
    protocol=PROTOCOL,
    hostPort=PORT,
    hostIP=IP,
)
_OPAQUE_CONTAINER_FIELDS = (
    "env", "envFrom", "resources", "resizePolicy", "restartPolicy", "volumeMounts",
    "volumeDevices", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle",
    "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy",
    "securityContext", "stdin", "stdinOnce", "tty", "workingDir",
)
CONTAINER = obj(
    required=["name"],
    name=LABEL_NAME,
    image=Str(),
    command=ListOf(Str()),
    args=ListOf(Str()),
    ports=ListOf(CONTAINER_PORT),
    **dict.fromkeys(_OPAQUE_CONTAINER_FIELDS, Opaque()),
)
_OPAQUE_POD_SPEC_FIELDS = (
    "volumes", "ephemeralContainers", "terminationGracePeriodSeconds",
    "activeDeadlineSeconds", "dnsPolicy", "nodeSelector", "automountServiceAccountToken",
    "shareProcessNamespace", "securityContext", "imagePullSecrets", "hostname", "subdomain",
    "affinity", "schedulerName", "tolerations", "hostAliases", "priorityClassName",
    "priority", "dnsConfig", "readinessGates", "runtimeClassName", "enableServiceLinks",
    "preemptionPolicy", "overhead", "topologySpreadConstraints", "setHostnameAsFQDN", "os",
    "hostUsers", "schedulingGates", "resourceClaims", "hostPID", "hostIPC",
)


def _pod_port_names(spec: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Port names are unique across the whole pod (a Service's targetPort names one)."""
    seen: set[str] = set()
    for c, container in enumerate(spec.get("containers") or []):
        for p, port in enumerate(container.get("ports") or []):
            name = port.get("name")
            if name is None:
                continue
            if name in seen:
                errors.append(duplicate(f"{path}.containers[{c}].ports[{p}].name", name))
            seen.add(name)


POD_SPEC = obj(
    required=["containers"],
    containers=ListOf(CONTAINER, min_items=1),
    initContainers=ListOf(CONTAINER),
    nodeName=Str(),
    serviceAccountName=Str(),
    serviceAccount=Str(),
    hostNetwork=Bool(),
    restartPolicy=one_of("Always", "OnFailure", "Never"),
    checks=[_unique_names("containers"), _pod_port_names],
    **dict.fromkeys(_OPAQUE_POD_SPEC_FIELDS, Opaque()),
)
POD_STATUS = obj(
    phase=one_of("Pending", "Running", "Succeeded", "Failed", "Unknown"),
    podIP=IP,
    podIPs=ListOf(obj(required=["ip"], ip=IP)),
    hostIP=IP,
    hostIPs=ListOf(obj(required=["ip"], ip=IP)),
    conditions=ListOf(obj(required=["type", "status"], type=Str(), status=one_of("True", "False", "Unknown"),
                          **dict.fromkeys(("lastProbeTime", "lastTransitionTime", "reason", "message"), Opaque()))),
    **dict.fromkeys(("message", "reason", "nominatedNodeName", "startTime", "initContainerStatuses",
                     "containerStatuses", "ephemeralContainerStatuses", "qosClass", "resize",
                     "resourceClaimStatuses"), Opaque()),
)

# --- Service ---------------------------------------------------------------------------


def _service(spec: Mapping[str, Any], path: str, errors: Errors) -> None:
    kind = spec.get("type", "ClusterIP")
    ports = spec.get("ports") or []
    if kind == "ExternalName":
        if not spec.get("externalName"):
            errors.append(required(f"{path}.externalName", "must be set when type is ExternalName"))
    elif not ports and spec.get("clusterIP") != "None":
        errors.append(required(f"{path}.ports"))
    if len(ports) > 1:
        for i, port in enumerate(ports):
            if "name" not in port:
                errors.append(required(f"{path}.ports[{i}].name", "must be set when a service has more than one port"))
    seen: set[tuple[int, str]] = set()
    for i, port in enumerate(ports):
        key = (port["port"], port.get("protocol", "TCP"))
        if key in seen:
            errors.append(duplicate(f"{path}.ports[{i}]", {"port": key[0], "protocol": key[1]}))
        seen.add(key)
    cluster_ip = spec.get("clusterIP")
    if cluster_ip not in (None, "", "None") and (why := _ip_reason(cluster_ip)):
        errors.append(invalid(f"{path}.clusterIP", cluster_ip, why))


def _ip_reason(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return "must be a valid IP address, \"None\", or empty"
    return None


SERVICE_PORT = obj(
    required=["port"],
    name=LABEL_NAME,
    protocol=PROTOCOL,
    appProtocol=Str(),
    port=PORT,
    targetPort=IntOrStr(PORT, PORT_NAME),
    nodePort=PORT,
)
SERVICE_SPEC = obj(
    ports=ListOf(SERVICE_PORT),
    selector=Labels(),
    clusterIP=Str(),
    clusterIPs=ListOf(Str()),
    type=one_of("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"),
    externalName=Str(),
    externalIPs=ListOf(IP),
    sessionAffinity=one_of("None", "ClientIP"),
    sessionAffinityConfig=Opaque(),
    publishNotReadyAddresses=Bool(),
    ipFamilies=ListOf(one_of("IPv4", "IPv6"), max_items=2),
    ipFamilyPolicy=one_of("SingleStack", "PreferDualStack", "RequireDualStack"),
    internalTrafficPolicy=one_of("Cluster", "Local"),
    externalTrafficPolicy=one_of("Cluster", "Local"),
    trafficDistribution=Str(),
    **dict.fromkeys(("loadBalancerIP", "loadBalancerSourceRanges", "loadBalancerClass",
                     "healthCheckNodePort", "allocateLoadBalancerNodePorts"), Opaque()),
    checks=[_service],
)
SERVICE_STATUS = obj(loadBalancer=Opaque(), conditions=ListOf(Opaque()))

# --- Endpoints, Node, Namespace --------------------------------------------------------

ENDPOINT_ADDRESS = obj(
    required=["ip"],
    ip=IP,
    hostname=Str(),
    nodeName=Str(),
    targetRef=obj(**dict.fromkeys(("kind", "name", "namespace", "uid", "apiVersion", "resourceVersion",
                                   "fieldPath"), Str())),
)
ENDPOINTS_SUBSET = obj(
    addresses=ListOf(ENDPOINT_ADDRESS),
    notReadyAddresses=ListOf(ENDPOINT_ADDRESS),
    ports=ListOf(obj(required=["port"], name=Str(), port=PORT, protocol=PROTOCOL, appProtocol=Str())),
)
NODE_SPEC = obj(
    podCIDR=CIDR,
    podCIDRs=ListOf(CIDR, max_items=2),
    unschedulable=Bool(),
    providerID=Str(),
    taints=ListOf(Opaque()),
)
NODE_STATUS = obj(
    addresses=ListOf(obj(
        required=["type", "address"],
        type=one_of("InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"),
        address=Str(non_empty=True),
    )),
    **dict.fromkeys(("capacity", "allocatable", "phase", "conditions", "daemonEndpoints", "nodeInfo",
                     "images", "volumesInUse", "volumesAttached", "config", "runtimeHandlers",
                     "features"), Opaque()),
)
NAMESPACE_SPEC = obj(finalizers=ListOf(Str()))
NAMESPACE_STATUS = obj(phase=one_of("Active", "Terminating"), conditions=ListOf(Opaque()))

# Top-level fields besides apiVersion, kind and metadata, per kind.
BODIES: dict[str, dict[str, Node]] = {
    "Namespace": {"spec": NAMESPACE_SPEC, "status": NAMESPACE_STATUS},
    "Node": {"spec": NODE_SPEC, "status": NODE_STATUS},
    "Pod": {"spec": POD_SPEC, "status": POD_STATUS},
    "Service": {"spec": SERVICE_SPEC, "status": SERVICE_STATUS},
    "Endpoints": {"subsets": ListOf(ENDPOINTS_SUBSET)},
    "NetworkPolicy": {"spec": NETWORK_POLICY_SPEC},
    "AdminNetworkPolicy": {"spec": ADMIN_NETWORK_POLICY_SPEC, "status": POLICY_STATUS},
    "BaselineAdminNetworkPolicy": {"spec": BASELINE_ADMIN_NETWORK_POLICY_SPEC, "status": POLICY_STATUS},
}
# Kinds whose spec must be present.
SPEC_REQUIRED = frozenset({"Pod", "NetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy"})

