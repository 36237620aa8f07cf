"""Responses assembled from once-serialized resource entries decode as ordinary messages."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control.xds.resources import CLUSTER, Resource
from control.xds.stream import Push
from control.xds.wire import encode_delta, encode_sotw

A = Resource("a", cluster_pb2.Cluster(name="a"))
B = Resource("b", cluster_pb2.Cluster(name="b"))


def test_sotw_response_decodes_with_header_and_every_resource() -> None:
    msg = discovery_pb2.DiscoveryResponse.FromString(encode_sotw(Push(CLUSTER, "n1", "v9", (A, B))))
    assert (msg.type_url, msg.nonce, msg.version_info) == (CLUSTER, "n1", "v9")
    assert [r.type_url for r in msg.resources] == [CLUSTER, CLUSTER]
    names = []
    for packed in msg.resources:
        c = cluster_pb2.Cluster()
        packed.Unpack(c)
        names.append(c.name)
    assert names == ["a", "b"]
    assert msg.control_plane.identifier == "tulle-control"


def test_delta_response_decodes_with_versions_and_removals() -> None:
    msg = discovery_pb2.DeltaDiscoveryResponse.FromString(encode_delta(Push(CLUSTER, "n2", "v9", (A,), ("gone",))))
    assert [(r.name, r.version) for r in msg.resources] == [("a", A.version)]
    assert list(msg.removed_resources) == ["gone"]
    assert msg.nonce == "n2"


def test_resource_version_is_a_hash_of_content() -> None:
    assert Resource("a", cluster_pb2.Cluster(name="a")).version == A.version
    assert Resource("a", cluster_pb2.Cluster(name="a", alt_stat_name="x")).version != A.version
