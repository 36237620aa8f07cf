"""tulle-agent's resources ride the same ADS stream, with Tulle's own type URLs: a
gRPC ADS client speaking as an agent sees a node added to the mesh, and the pods of its
own node."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from cni.overlay import parse_nodes
from control.xds.resources import TULLE_NODE, TULLE_POD
from proto.tulle.netpolicy.v1 import node_pb2, pod_pb2
from tests.xds.harness import ControlPlane, eventually, pod

AGENT = base_pb2.Node(id="agent~192.168.50.1~node-1~cluster.local")


def node_doc(name: str, ip: str, cidr: str) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"podCIDR": cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


class DeltaAgentClient:
    """A delta ADS stream as tulle-agent opens it: wildcard Node and Pod subscriptions,
    ACKing every response."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._requests: queue.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = queue.Queue()
        self.responses: queue.Queue[discovery_pb2.DeltaDiscoveryResponse] = queue.Queue()
        for type_url in (TULLE_NODE, TULLE_POD):
            self._requests.put(discovery_pb2.DeltaDiscoveryRequest(node=AGENT, type_url=type_url))
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = stub.DeltaAggregatedResources(iter(self._requests.get, None))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for resp in self._call:
                self.responses.put(resp)
                self._requests.put(discovery_pb2.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce))
        except grpc.RpcError:
            pass

    def next(self, type_url: str) -> discovery_pb2.DeltaDiscoveryResponse:
        while True:
            resp = self.responses.get(timeout=10)
            if resp.type_url == type_url:
                return resp

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._channel.close()
        self._thread.join(timeout=5)


@pytest.fixture
def agent(control: ControlPlane) -> Iterator[DeltaAgentClient]:
    control.apply(node_doc("node-1", "192.168.50.1", "10.244.1.0/24"))
    control.call(control.server.push_now)
    client = DeltaAgentClient(control.port)
    try:
        yield client
    finally:
        client.close()


def test_agent_receives_a_node_added_to_the_mesh_with_its_pod_cidr(control: ControlPlane, agent: DeltaAgentClient) -> None:
    first = agent.next(TULLE_NODE)
    assert [r.name for r in first.resources] == ["node-1"]
    control.apply(node_doc("node-2", "192.168.50.2", "10.244.2.0/24"))
    added = agent.next(TULLE_NODE)
    assert [r.name for r in added.resources] == ["node-2"]
    node = node_pb2.Node()
    added.resources[0].resource.Unpack(node)
    assert (node.underlay_ip, node.pod_cidr) == ("192.168.50.2", "10.244.2.0/24")


def test_agent_receives_every_addressed_pod_and_its_own_unaddressed_ones(control: ControlPlane, agent: DeltaAgentClient) -> None:
    agent.next(TULLE_POD)
    control.apply(
        pod("mine", "10.244.1.5", {"app": "a"}, node="node-1"),
        pod("theirs", "10.244.2.5", {"app": "a"}, node="node-2"),
        pod("starting", "", {"app": "a"}, node="node-1"),
        pod("elsewhere", "", {"app": "a"}, node="node-2"),
    )
    resp = agent.next(TULLE_POD)
    assert sorted(r.name for r in resp.resources) == ["default/mine", "default/starting", "default/theirs"]
    p = pod_pb2.Pod()
    next(r for r in resp.resources if r.name == "default/mine").resource.Unpack(p)
    assert (p.ip, dict(p.labels)) == ("10.244.1.5", {"app": "a"})


def test_agent_shows_in_proxy_status_with_acked_versions(control: ControlPlane, agent: DeltaAgentClient) -> None:
    agent.next(TULLE_NODE)
    agent.next(TULLE_POD)

    def acked() -> bool:
        [status] = control.call(control.server.status)
        return status.kind == "agent" and all(t.acked_version and t.pending == 0 for t in status.types)

    eventually(acked)


def test_node_resources_are_the_node_list_tulle_agent_programs_the_overlay_from(
    control: ControlPlane, agent: DeltaAgentClient
) -> None:
    agent.next(TULLE_NODE)
    control.apply(node_doc("node-2", "192.168.50.2", "10.244.2.0/24"))
    resources = [*agent.next(TULLE_NODE).resources]
    nodes = []
    for r in resources:
        node = node_pb2.Node()
        r.resource.Unpack(node)
        nodes.append(json_format.MessageToDict(node))
    [overlay] = parse_nodes(nodes)
    assert (overlay.name, str(overlay.underlay_ip), str(overlay.pod_cidr)) == ("node-2", "192.168.50.2", "10.244.2.0/24")
