"""Translation of the mesh model into tulle-agent's resources (Tulle's own type URLs).

Every agent is sent every Node (`tulle.netpolicy.v1.Node`, named by node name): the
overlay programs a route, neighbour and FDB entry per remote node from it. Each agent is
also sent the Pods scheduled on its own node (`tulle.netpolicy.v1.Pod`, named
`<namespace>/<name>`), which it enforces policy for.
"""

from __future__ import annotations

from control.xds.mesh import MeshSnapshot, Node, Pod
from control.xds.resources import Resource
from control.xds.sidecar import TranslationMemo
from proto.tulle.netpolicy.v1 import node_pb2, pod_pb2


def agent_resources(mesh: MeshSnapshot, node_name: str, memo: TranslationMemo) -> list[Resource]:
    out = [memo.get(("agent-node", n), _node, n) for n in mesh.nodes.values()]
    for pod in mesh.pods.values():
        if pod.node_name == node_name:
            out.append(memo.get(("agent-pod", pod), _pod, pod))
    return out


def _node(node: Node) -> Resource:
    return Resource(
        node.name,
        node_pb2.Node(name=node.name, underlay_ip=node.internal_ip, pod_cidr=node.pod_cidr, vtep_mac=node.vtep_mac),
    )


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
        ),
    )
