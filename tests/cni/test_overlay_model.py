"""The overlay's node list and per-peer entries (cni.overlay), without I/O."""

from __future__ import annotations

import ipaddress

import pytest

from cni.overlay import NodeListError, nodes_from_messages, parse_nodes, peer_entries, vtep_mac_for
from proto.tulle.netpolicy.v1.node_pb2 import Node

NODES = [
    {"name": "n1", "underlayIp": "192.168.77.1", "podCidr": "10.244.1.0/24"},
    {"name": "n2", "underlay_ip": "192.168.77.2", "pod_cidr": "10.244.2.0/24", "vtep_mac": "0E:74:C0:A8:4D:02"},
]


def test_vtep_mac_is_derived_from_the_underlay_address() -> None:
    assert vtep_mac_for(ipaddress.IPv4Address("192.168.77.1")) == "0e:74:c0:a8:4d:01"


def test_node_list_accepts_camel_case_and_proto_field_names() -> None:
    nodes = parse_nodes(NODES)
    assert [n.vtep_mac for n in nodes] == ["0e:74:c0:a8:4d:01", "0e:74:c0:a8:4d:02"]


def test_each_remote_node_gets_one_route_neighbour_and_fdb_entry() -> None:
    (peer,) = peer_entries("n1", parse_nodes(NODES))
    assert (peer.node, str(peer.route_dst), str(peer.via), peer.mac, str(peer.underlay_ip)) == (
        "n2", "10.244.2.0/24", "10.244.2.0", "0e:74:c0:a8:4d:02", "192.168.77.2"
    )


@pytest.mark.parametrize(
    ("nodes", "mentions"),
    [
        ([{"name": "a", "underlayIp": "1.1.1.1", "podCidr": "10.0.0.0/24"}, {"name": "a", "underlayIp": "1.1.1.2", "podCidr": "10.0.1.0/24"}], "nodes[1].name"),
        ([{"name": "a", "underlayIp": "1.1.1.1", "podCidr": "10.0.0.0/16"}, {"name": "b", "underlayIp": "1.1.1.2", "podCidr": "10.0.1.0/24"}], "nodes[1].podCidr"),
        ([{"name": "a", "underlayIp": "nope", "podCidr": "10.0.0.0/24"}], "nodes[0].underlayIp"),
        ([{"name": "a", "underlayIp": "1.1.1.1", "podCidr": "10.0.0.1/24"}], "nodes[0].podCidr"),
        ([{"name": "a", "underlayIp": "1.1.1.1", "podCidr": "10.0.0.0/24", "zone": "x"}], "zone"),
    ],
)
def test_bad_node_lists_are_refused_naming_the_field(nodes: list[dict[str, str]], mentions: str) -> None:
    with pytest.raises(NodeListError) as err:
        parse_nodes(nodes)
    assert mentions in str(err.value)


def test_node_messages_give_the_same_list_as_their_json_form() -> None:
    messages = [Node(name="n1", underlay_ip="192.168.77.1", pod_cidr="10.244.1.0/24"),
                Node(name="n2", underlay_ip="192.168.77.2", pod_cidr="10.244.2.0/24", vtep_mac="0E:74:C0:A8:4D:02")]
    assert nodes_from_messages(messages) == parse_nodes(NODES)
