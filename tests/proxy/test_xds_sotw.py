"""The ADS state machine: subscriptions, ACK, NACK, resumption."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse

from proxy.xds.sotw import CLUSTER, ENDPOINTS, SotwState


def state() -> SotwState:
    return SotwState(Node(id="n1"))


def test_first_subscription_is_a_request_without_version_or_nonce() -> None:
    request = state().subscribe(CLUSTER)
    assert request is not None
    assert (request.type_url, request.version_info, request.response_nonce) == (CLUSTER, "", "")
    assert request.node.id == "n1"


def test_ack_carries_the_responses_version_and_nonce() -> None:
    machine = state()
    machine.subscribe(CLUSTER)
    ack = machine.accepted(DiscoveryResponse(type_url=CLUSTER, version_info="v1", nonce="a"))
    assert (ack.version_info, ack.response_nonce) == ("v1", "a")
    assert not ack.HasField("error_detail")


def test_nack_keeps_the_accepted_version_and_says_why() -> None:
    machine = state()
    machine.subscribe(CLUSTER)
    machine.accepted(DiscoveryResponse(type_url=CLUSTER, version_info="v1", nonce="a"))
    nack = machine.rejected(DiscoveryResponse(type_url=CLUSTER, version_info="v2", nonce="b"),
                            "Cluster x.lb_subset_config: not supported by tulle-proxy")
    assert (nack.version_info, nack.response_nonce) == ("v1", "b")
    assert nack.error_detail.message.startswith("Cluster x.lb_subset_config")
    assert nack.error_detail.code == 3


def test_changing_names_sends_a_request_and_same_names_send_nothing() -> None:
    machine = state()
    assert machine.subscribe(ENDPOINTS, ("b", "a")) is not None
    assert machine.subscribe(ENDPOINTS, ("a", "b")) is None
    request = machine.subscribe(ENDPOINTS, ("a",))
    assert request is not None
    assert list(request.resource_names) == ["a"]


def test_resubscription_after_reconnect_resumes_at_the_accepted_version() -> None:
    machine = state()
    machine.subscribe(CLUSTER)
    machine.subscribe(ENDPOINTS, ("web",))
    machine.accepted(DiscoveryResponse(type_url=CLUSTER, version_info="v7", nonce="n"))
    requests = {request.type_url: request for request in machine.resubscribe_all()}
    assert requests[CLUSTER].version_info == "v7"
    assert requests[CLUSTER].response_nonce == ""
    assert list(requests[ENDPOINTS].resource_names) == ["web"]


def test_delta_candidate_is_committed_only_on_ack() -> None:
    from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, Resource
    from google.protobuf.any_pb2 import Any

    from proxy.xds.delta import DeltaState

    machine = DeltaState(Node(id="n1"))
    first = machine.subscribe(CLUSTER, wildcard=True)
    assert first is not None and list(first.resource_names_subscribe) == []
    one = DeltaDiscoveryResponse(type_url=CLUSTER, nonce="1", resources=[
        Resource(name="a", version="1", resource=Any()), Resource(name="b", version="1", resource=Any())])
    assert len(machine.candidate(one)) == 2
    ack = machine.accepted(one)
    assert ack.response_nonce == "1" and not ack.HasField("error_detail")
    two = DeltaDiscoveryResponse(type_url=CLUSTER, nonce="2", removed_resources=["a"])
    assert len(machine.candidate(two)) == 1
    nack = machine.rejected(two, "bad")
    assert nack.error_detail.message == "bad"
    [resume] = machine.resubscribe_all()
    assert dict(resume.initial_resource_versions) == {"a": "1", "b": "1"}


def test_delta_subscription_changes_are_sent_as_differences() -> None:
    from proxy.xds.delta import DeltaState

    machine = DeltaState(Node(id="n1"))
    machine.subscribe(ENDPOINTS, ("a", "b"))
    request = machine.subscribe(ENDPOINTS, ("b", "c"))
    assert request is not None
    assert list(request.resource_names_subscribe) == ["c"]
    assert list(request.resource_names_unsubscribe) == ["a"]
    assert machine.subscribe(ENDPOINTS, ("c", "b")) is None
