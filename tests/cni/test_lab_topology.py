"""The lab's shape (cni.lab.topology), without I/O."""

from __future__ import annotations

import pytest

from cni.lab.topology import (
    LabError,
    LabTopology,
    PortMapping,
    conflist,
    node_list,
    parse_labels,
    parse_pod_ref,
    parse_port,
)
from cni.overlay import parse_nodes


def test_nodes_get_distinct_underlay_addresses_and_pod_cidrs() -> None:
    nodes = LabTopology("demo", 3).nodes()
    assert [(n.name, str(n.underlay_ip), str(n.pod_cidr)) for n in nodes] == [
        ("node-1", "172.30.0.1", "10.244.1.0/24"),
        ("node-2", "172.30.0.2", "10.244.2.0/24"),
        ("node-3", "172.30.0.3", "10.244.3.0/24"),
    ]


def test_every_namespace_carries_the_lab_prefix() -> None:
    topology = LabTopology("demo", 2)
    names = [topology.underlay_netns, *(n.netns for n in topology.nodes()), topology.pod_netns("ab" * 16)]
    assert all(name.startswith("tl-demo.") for name in names)


def test_the_prefixes_of_two_labs_never_overlap() -> None:
    assert not LabTopology("a-b", 1).underlay_netns.startswith(LabTopology("a", 1).prefix)


def test_node_list_is_a_valid_overlay_node_list() -> None:
    nodes = LabTopology("demo", 2).nodes()
    assert [n.name for n in parse_nodes(node_list(nodes))] == ["node-1", "node-2"]


def test_conflist_chains_portmap_after_tulle_cni() -> None:
    plugins = conflist("/run/x.sock")["plugins"]
    assert [p["type"] for p in plugins] == ["tulle-cni", "portmap"]
    assert plugins[0]["agentSocket"] == "/run/x.sock"


@pytest.mark.parametrize("name", ["", "Upper", "under_score", "x" * 21, "-lead"])
def test_bad_lab_names_are_refused(name: str) -> None:
    with pytest.raises(LabError, match="--name"):
        LabTopology(name, 1)


def test_node_count_is_bounded() -> None:
    with pytest.raises(LabError, match="--nodes"):
        LabTopology("demo", 0)


def test_pod_ref_without_namespace_is_in_default() -> None:
    assert parse_pod_ref("web") == ("default", "web")
    assert parse_pod_ref("shop/cart-1") == ("shop", "cart-1")


def test_bad_pod_ref_names_the_part() -> None:
    with pytest.raises(LabError, match="namespace 'Shop'"):
        parse_pod_ref("Shop/cart")


def test_labels_parse_as_kubernetes_labels() -> None:
    assert parse_labels("app=cart, tier=web,example.com/team=") == {"app": "cart", "tier": "web", "example.com/team": ""}


@pytest.mark.parametrize("raw", ["app", "=x", "app=has space", "bad key=x"])
def test_bad_labels_are_refused(raw: str) -> None:
    with pytest.raises(LabError, match="--labels"):
        parse_labels(raw)


def test_ports_parse_with_tcp_as_the_default_protocol() -> None:
    assert parse_port("18080:8080") == PortMapping(18080, 8080, "tcp")
    assert parse_port("5353:53/udp") == PortMapping(5353, 53, "udp")


@pytest.mark.parametrize("raw", ["80", "a:b", "0:80", "80:70000", "80:80/sctp"])
def test_bad_ports_are_refused(raw: str) -> None:
    with pytest.raises(LabError, match="--port"):
        parse_port(raw)
