"""The xDS protocol state machine of one ADS stream (sans-IO, fake clock)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from control.xds.resources import CLUSTER, ENDPOINT, Resource, ResourceSet
from control.xds.stream import Push, Variant, XdsStream

NODE = base_pb2.Node(id="sidecar~10.0.0.1~a.default~default.svc.cluster.local")


def cluster(name: str, timeout: int = 1) -> Resource:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.seconds = timeout
    return Resource(name, c)


def cla(name: str, port: int = 80) -> Resource:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    a.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
    return Resource(name, a)


def rset(*resources: Resource) -> ResourceSet:
    return ResourceSet.build(resources)


def sotw(type_url: str, names: tuple[str, ...] = (), nonce: str = "", version: str = "", error: str = "") -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(
        node=NODE, type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version
    )
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def delta(
    type_url: str,
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    initial: dict[str, str] | None = None,
    error: str = "",
) -> discovery_pb2.DeltaDiscoveryRequest:
    req = discovery_pb2.DeltaDiscoveryRequest(
        node=NODE,
        type_url=type_url,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def names(push: Push) -> list[str]:
    return [r.name for r in push.resources]


# -- state of the world ----------------------------------------------------------------


def test_sotw_first_wildcard_request_gets_every_resource_with_type_version_and_nonce() -> None:
    s = XdsStream(Variant.SOTW)
    resources = rset(cluster("a"), cluster("b"))
    s.on_resources(resources, 0)
    [push] = s.on_sotw_request(sotw(CLUSTER), 0)
    assert names(push) == ["a", "b"]
    assert push.version_info == resources.versions[CLUSTER]
    assert push.nonce == "1"


def test_sotw_first_request_before_any_resources_is_answered_when_they_arrive() -> None:
    s = XdsStream(Variant.SOTW)
    assert s.on_sotw_request(sotw(CLUSTER), 0) == []
    [push] = s.on_resources(rset(cluster("a")), 1)
    assert names(push) == ["a"]


def test_sotw_first_request_is_answered_even_when_empty() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(), 0)
    [push] = s.on_sotw_request(sotw(CLUSTER), 0)
    assert push.resources == ()


def test_sotw_ack_records_the_acked_version_and_sends_nothing() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cluster("a")), 0)
    [push] = s.on_sotw_request(sotw(CLUSTER), 0)
    assert s.on_sotw_request(sotw(CLUSTER, nonce=push.nonce, version=push.version_info), 1) == []
    [status] = s.status()
    assert (status.acked_version, status.pending, status.last_nack) == (push.version_info, 0, None)


def test_sotw_nack_keeps_the_last_good_version_and_records_the_error() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cluster("a")), 0)
    [good] = s.on_sotw_request(sotw(CLUSTER), 0)
    s.on_sotw_request(sotw(CLUSTER, nonce=good.nonce, version=good.version_info), 1)
    [bad] = s.on_resources(rset(cluster("a", timeout=2)), 2)
    assert s.on_sotw_request(sotw(CLUSTER, nonce=bad.nonce, version=good.version_info, error="no"), 3) == []
    [status] = s.status()
    assert status.acked_version == good.version_info
    assert status.last_nack is not None
    assert (status.last_nack.message, status.last_nack.version_info, status.last_nack.at) == ("no", bad.version_info, 3)
    assert status.pending == 0


def test_sotw_after_a_nack_the_next_change_resends_what_the_client_lacks() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cla("a"), cla("b")), 0)
    [first] = s.on_sotw_request(sotw(ENDPOINT, ("a", "b")), 0)
    s.on_sotw_request(sotw(ENDPOINT, ("a", "b"), nonce=first.nonce), 0)
    [bad] = s.on_resources(rset(cla("a", 81), cla("b")), 1)
    assert names(bad) == ["a"]
    s.on_sotw_request(sotw(ENDPOINT, ("a", "b"), nonce=bad.nonce, error="rejected"), 2)
    [retry] = s.on_resources(rset(cla("a", 81), cla("b", 82)), 3)
    assert names(retry) == ["a", "b"]


def test_sotw_named_subscription_gets_only_the_requested_resources() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cla("a"), cla("b"), cla("c")), 0)
    [push] = s.on_sotw_request(sotw(ENDPOINT, ("a", "c")), 0)
    assert names(push) == ["a", "c"]


def test_sotw_adding_a_name_sends_just_the_new_endpoint_resource() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cla("a"), cla("b")), 0)
    [push] = s.on_sotw_request(sotw(ENDPOINT, ("a",)), 0)
    [more] = s.on_sotw_request(sotw(ENDPOINT, ("a", "b"), nonce=push.nonce), 1)
    assert names(more) == ["b"]


def test_sotw_named_cluster_subscription_resends_the_full_requested_set() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cluster("a"), cluster("b")), 0)
    [push] = s.on_sotw_request(sotw(CLUSTER, ("a",)), 0)
    [more] = s.on_sotw_request(sotw(CLUSTER, ("a", "b"), nonce=push.nonce), 1)
    assert names(more) == ["a", "b"]


def test_sotw_endpoint_change_sends_only_the_changed_assignment() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cla("a"), cla("b")), 0)
    [push] = s.on_sotw_request(sotw(ENDPOINT, ("a", "b")), 0)
    s.on_sotw_request(sotw(ENDPOINT, ("a", "b"), nonce=push.nonce), 0)
    [change] = s.on_resources(rset(cla("a"), cla("b", 90)), 1)
    assert names(change) == ["b"]


def test_sotw_cluster_change_sends_the_full_set() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cluster("a"), cluster("b")), 0)
    [push] = s.on_sotw_request(sotw(CLUSTER), 0)
    s.on_sotw_request(sotw(CLUSTER, nonce=push.nonce), 0)
    [change] = s.on_resources(rset(cluster("a"), cluster("b", 5)), 1)
    assert names(change) == ["a", "b"]


def test_sotw_cluster_removal_sends_the_remaining_set() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cluster("a"), cluster("b")), 0)
    s.on_sotw_request(sotw(CLUSTER), 0)
    [change] = s.on_resources(rset(cluster("a")), 1)
    assert names(change) == ["a"]


def test_sotw_unchanged_resources_push_nothing() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cluster("a")), 0)
    s.on_sotw_request(sotw(CLUSTER), 0)
    assert s.on_resources(rset(cluster("a")), 1) == []


def test_sotw_stale_nonce_acknowledges_but_its_names_are_ignored() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_resources(rset(cla("a"), cla("b")), 0)
    [first] = s.on_sotw_request(sotw(ENDPOINT, ("a",)), 0)
    [second] = s.on_resources(rset(cla("a", 81), cla("b")), 1)
    assert s.on_sotw_request(sotw(ENDPOINT, ("a", "b"), nonce=first.nonce), 2) == []
    [status] = s.status()
    assert status.pending == 1  # `second` still in flight
    [more] = s.on_sotw_request(sotw(ENDPOINT, ("a", "b"), nonce=second.nonce), 3)
    assert names(more) == ["b"]


def test_sotw_request_with_a_foreign_nonce_starts_afresh() -> None:
    s = XdsStream(Variant.SOTW, nonce_prefix="x-")
    s.on_resources(rset(cluster("a")), 0)
    [push] = s.on_sotw_request(sotw(CLUSTER, nonce="other-replica-7", version="v0"), 0)
    assert names(push) == ["a"]
    assert push.nonce == "x-1"


def test_pushes_follow_make_before_break_type_order() -> None:
    s = XdsStream(Variant.SOTW)
    s.on_sotw_request(sotw(ENDPOINT, ("a",)), 0)
    s.on_sotw_request(sotw(CLUSTER), 0)
    pushes = s.on_resources(rset(cluster("a"), cla("a")), 1)
    assert [p.type_url for p in pushes] == [CLUSTER, ENDPOINT]


# -- delta -----------------------------------------------------------------------------


def test_delta_legacy_wildcard_first_request_gets_everything() -> None:
    s = XdsStream(Variant.DELTA)
    s.on_resources(rset(cluster("a"), cluster("b")), 0)
    [push] = s.on_delta_request(delta(CLUSTER), 0)
    assert names(push) == ["a", "b"]
    assert push.removed == ()


def test_delta_explicit_wildcard_subscription_gets_everything() -> None:
    s = XdsStream(Variant.DELTA)
    s.on_resources(rset(cluster("a")), 0)
    [push] = s.on_delta_request(delta(CLUSTER, ("*",)), 0)
    assert names(push) == ["a"]


def test_delta_sends_only_changes_and_names_removed_resources() -> None:
    s = XdsStream(Variant.DELTA)
    s.on_resources(rset(cluster("a"), cluster("b"), cluster("c")), 0)
    [first] = s.on_delta_request(delta(CLUSTER), 0)
    s.on_delta_request(delta(CLUSTER, nonce=first.nonce), 0)
    [push] = s.on_resources(rset(cluster("a"), cluster("b", 9)), 1)
    assert names(push) == ["b"]
    assert push.removed == ("c",)


def test_delta_initial_resource_versions_are_not_resent() -> None:
    s = XdsStream(Variant.DELTA)
    a, b = cluster("a"), cluster("b")
    s.on_resources(rset(a, b), 0)
    [push] = s.on_delta_request(delta(CLUSTER, initial={"a": a.version, "b": "old", "gone": "v"}), 0)
    assert names(push) == ["b"]
    assert push.removed == ("gone",)


def test_delta_named_subscribe_and_unsubscribe() -> None:
    s = XdsStream(Variant.DELTA)
    s.on_resources(rset(cla("a"), cla("b")), 0)
    [first] = s.on_delta_request(delta(ENDPOINT, ("a",)), 0)
    assert names(first) == ["a"]
    [second] = s.on_delta_request(delta(ENDPOINT, ("b",), nonce=first.nonce), 1)
    assert names(second) == ["b"]
    assert s.on_delta_request(delta(ENDPOINT, unsubscribe=("a",), nonce=second.nonce), 2) == []
    [change] = s.on_resources(rset(cla("a", 1), cla("b", 2)), 3)
    assert names(change) == ["b"]


def test_delta_subscribing_to_a_held_resource_sends_nothing() -> None:
    s = XdsStream(Variant.DELTA)
    a = cla("a")
    s.on_resources(rset(a), 0)
    [first] = s.on_delta_request(delta(ENDPOINT, ("a",)), 0)
    s.on_delta_request(delta(ENDPOINT, nonce=first.nonce), 0)
    assert s.on_delta_request(delta(ENDPOINT, ("a",)), 1) == []


def test_delta_nack_keeps_the_last_good_version_and_the_next_change_resends() -> None:
    s = XdsStream(Variant.DELTA)
    s.on_resources(rset(cluster("a"), cluster("b")), 0)
    [first] = s.on_delta_request(delta(CLUSTER), 0)
    s.on_delta_request(delta(CLUSTER, nonce=first.nonce), 0)
    [bad] = s.on_resources(rset(cluster("a", 2), cluster("b")), 1)
    s.on_delta_request(delta(CLUSTER, nonce=bad.nonce, error="bad a"), 2)
    [status] = s.status()
    assert status.acked_version == first.version_info
    assert status.last_nack is not None and status.last_nack.message == "bad a"
    [again] = s.on_resources(rset(cluster("a", 2), cluster("b", 3)), 3)
    assert names(again) == ["a", "b"]


def test_delta_ack_of_a_newer_push_accepts_older_ones_in_flight() -> None:
    s = XdsStream(Variant.DELTA)
    s.on_resources(rset(cla("a")), 0)
    s.on_delta_request(delta(ENDPOINT, ("a",)), 0)
    s.on_resources(rset(cla("a", 1)), 1)
    [last] = s.on_resources(rset(cla("a", 2)), 2)
    s.on_delta_request(delta(ENDPOINT, nonce=last.nonce), 3)
    [status] = s.status()
    assert (status.pending, status.acked_version) == (0, last.version_info)
