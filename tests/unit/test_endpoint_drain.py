"""Which nodes still route to a leaving pod, read from one CSDS answer (`still_routing`)."""

from __future__ import annotations

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2

from cni.lab.endpoint_drain import ENDPOINT_TYPE, SERVICE_TYPE, still_routing
from proto.tulle.netpolicy.v1.service_pb2 import Service, ServiceEndpoint, ServicePort

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def assignment(*addresses: str) -> any_pb2.Any:
    cla = ClusterLoadAssignment(cluster_name="outbound|8080||web.shop.svc.cluster.local")
    locality = cla.endpoints.add()
    for address in addresses:
        socket_address = locality.lb_endpoints.add().endpoint.address.socket_address
        socket_address.address, socket_address.port_value = address, 8080
    packed = any_pb2.Any()
    packed.Pack(cla)
    return packed


def service(*addresses: str) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(Service(name="web", namespace="shop", ports=[
        ServicePort(port=8080, endpoints=[ServiceEndpoint(ip=a, port=8080) for a in addresses])]))
    return packed


def status(*nodes: tuple[str, str, any_pb2.Any, int]) -> csds_pb2.ClientStatusResponse:
    out = csds_pb2.ClientStatusResponse()
    for node_id, type_url, resource, client_status in nodes:
        config = out.config.add()
        config.node.id = node_id
        config.generic_xds_configs.add(type_url=type_url, xds_config=resource, client_status=client_status)
    return out


def test_a_node_sent_an_assignment_with_the_address_still_routes_to_it() -> None:
    answer = status(("sidecar~a", ENDPOINT_TYPE, assignment("10.244.1.2", "10.244.1.3"), dump_pb2.ACKED),
                    ("sidecar~b", ENDPOINT_TYPE, assignment("10.244.1.3"), dump_pb2.ACKED))
    assert still_routing(answer, "10.244.1.2") == ["sidecar~a"]


def test_an_address_is_matched_whole_not_by_prefix() -> None:
    answer = status(("sidecar~a", ENDPOINT_TYPE, assignment("10.244.1.23"), dump_pb2.ACKED))
    assert still_routing(answer, "10.244.1.2") == []


def test_a_node_that_has_not_acked_the_assignment_without_it_still_counts() -> None:
    answer = status(("sidecar~a", ENDPOINT_TYPE, assignment("10.244.1.3"), dump_pb2.REQUESTED))
    assert still_routing(answer, "10.244.1.2") == ["sidecar~a"]


def test_agents_service_tables_count_too() -> None:
    answer = status(("agent~node-1", SERVICE_TYPE, service("10.244.1.2"), dump_pb2.ACKED),
                    ("agent~node-2", SERVICE_TYPE, service(), dump_pb2.ACKED))
    assert still_routing(answer, "10.244.1.2") == ["agent~node-1"]


def test_other_resource_types_do_not_hold_a_node_back() -> None:
    listener = any_pb2.Any(type_url=LISTENER_TYPE, value=b"10.244.1.2")
    answer = status(("sidecar~a", LISTENER_TYPE, listener, dump_pb2.REQUESTED))
    assert still_routing(answer, "10.244.1.2") == []
