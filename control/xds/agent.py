"""Translation of the mesh model into tulle-agent's resources (Tulle's own type URLs).

Every agent is sent:
- every Node (`tulle.netpolicy.v1.Node`, named by node name): the overlay programs a
  route, neighbour and FDB entry per remote node from it;
- every Namespace (`tulle.netpolicy.v1.Namespace`) with its labels, every Pod that has an
  address (`tulle.netpolicy.v1.Pod`, named `<namespace>/<name>`) and every NetworkPolicy
  (`tulle.netpolicy.v1.NetworkPolicy`, named `<namespace>/<name>`): a policy on one node
  selects peers on any node, by pod and namespace labels, so each agent needs them all.
  Likewise every AdminNetworkPolicy and the BaselineAdminNetworkPolicy, as one type
  (`tulle.netpolicy.v1.AdminNetworkPolicy`, `baseline` set for the latter), named
  `<name>` and `baseline/<name>` (a Kubernetes name has no "/": the two cannot collide).
  The agent's own pods are sent even before they have an address (their labels are
  what the CNI ADD path programs). Each message carries its object's resourceVersion,
  so an agent's ACK says which version of an object that node enforces.
- every Service with a ClusterIP (`tulle.netpolicy.v1.Service`, named `<namespace>/<name>`)
  joined with its Endpoints: per service port, the ready addresses of the subsets that
  carry a port of the same name and protocol (kube-proxy's rule), at that port. The agent
  DNATs ClusterIP traffic of non-meshed pods and answers DNS from it.
"""

from __future__ import annotations

import json

from control.xds.mesh import (
    AdminNetworkPolicy,
    Endpoints,
    MeshSnapshot,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    Service,
)
from control.xds.resources import Resource
from control.xds.sidecar import TranslationMemo
from proto.tulle.netpolicy.v1 import (
    admin_network_policy_pb2,
    namespace_pb2,
    network_policy_pb2,
    node_pb2,
    pod_pb2,
    service_pb2,
)


def agent_resources(mesh: MeshSnapshot, node_name: str, memo: TranslationMemo) -> list[Resource]:
    out = [memo.get(("agent-node", n), _node, n) for n in mesh.nodes.values()]
    out += [memo.get(("agent-ns", ns), _namespace, ns) for ns in mesh.namespace_objects.values()]
    for pod in mesh.pods.values():
        if pod.ip or pod.node_name == node_name:
            out.append(memo.get(("agent-pod", pod), _pod, pod))
    out += [memo.get(("agent-np", np), _network_policy, np) for np in mesh.network_policies]
    out += [memo.get(("agent-anp", anp), _admin_network_policy, anp) for anp in mesh.admin_network_policies]
    for hostname, service in mesh.services.items():
        if service.cluster_ip and service.cluster_ip != "None":
            key = (service, mesh.endpoints.get(hostname))
            out.append(memo.get(("agent-svc", key), _service, key))
    return out


def _node(node: Node) -> Resource:
    return Resource(
        node.name,
        node_pb2.Node(name=node.name, underlay_ip=node.internal_ip, pod_cidr=node.pod_cidr, vtep_mac=node.vtep_mac),
    )


def _namespace(ns: Namespace) -> Resource:
    return Resource(ns.name, namespace_pb2.Namespace(name=ns.name, labels=dict(ns.labels), resource_version=ns.resource_version))


def _pod(pod: Pod) -> Resource:
    return Resource(
        pod.key,
        pod_pb2.Pod(
            name=pod.name,
            namespace=pod.namespace,
            ip=pod.ip,
            node_name=pod.node_name,
            labels=dict(pod.labels),
            service_account=pod.service_account,
            ports=[pod_pb2.ContainerPort(name=p.name, port=p.port, protocol=p.protocol) for p in pod.ports],
            resource_version=pod.resource_version,
            annotations=dict(pod.annotations),
        ),
    )


def _network_policy(np: NetworkPolicy) -> Resource:
    return Resource(
        f"{np.namespace}/{np.name}",
        network_policy_pb2.NetworkPolicy(
            name=np.name, namespace=np.namespace, spec_json=json.dumps(np.spec, sort_keys=True),
            resource_version=np.resource_version,
        ),
    )


def admin_resource_name(name: str, baseline: bool) -> str:
    """The resource name of an AdminNetworkPolicy (`<name>`) or BaselineAdminNetworkPolicy
    (`baseline/<name>`) on the agents' stream."""
    return f"baseline/{name}" if baseline else name


def _admin_network_policy(anp: AdminNetworkPolicy) -> Resource:
    return Resource(
        admin_resource_name(anp.name, anp.baseline),
        admin_network_policy_pb2.AdminNetworkPolicy(
            name=anp.name, spec_json=json.dumps(anp.spec, sort_keys=True), resource_version=anp.resource_version,
            baseline=anp.baseline,
        ),
    )


def _service(pair: tuple[Service, Endpoints | None]) -> Resource:
    service, endpoints = pair
    msg = service_pb2.Service(name=service.name, namespace=service.namespace, cluster_ip=service.cluster_ip,
                              resource_version=service.resource_version)
    for port in service.ports:
        out = msg.ports.add(name=port.name, port=port.port, protocol=port.protocol)
        for subset in endpoints.subsets if endpoints else ():
            number = next((p.port for p in subset.ports if p.name == port.name and p.protocol == port.protocol), None)
            if number is None:
                continue
            for address in subset.addresses:
                if address.ready:
                    out.endpoints.add(ip=address.ip, port=number, node_name=address.node_name)
    return Resource(f"{service.namespace}/{service.name}", msg)
