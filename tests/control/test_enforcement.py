"""Reading enforcement from CSDS: a node enforces an object's version once it ACKed it,
and has dropped a deleted object only once it ACKed the deletion."""

from __future__ import annotations

import hashlib

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2

from control.meshctl.enforcement import REMOVING, from_client_status
from proto.tulle.netpolicy.v1 import network_policy_pb2

TYPE_URL = "type.googleapis.com/tulle.netpolicy.v1.NetworkPolicy"


def _status(*entries: tuple[str, network_policy_pb2.NetworkPolicy | None, str, int]) -> csds_pb2.ClientStatusResponse:
    reply = csds_pb2.ClientStatusResponse()
    config = reply.config.add()
    config.node.id = "agent~172.30.0.1~node-1~cluster.local"
    for name, message, version, status in entries:
        entry = config.generic_xds_configs.add(type_url=TYPE_URL, name=name, version_info=version, client_status=status)
        if message is not None:
            entry.xds_config.CopyFrom(any_pb2.Any(type_url=TYPE_URL, value=message.SerializeToString(deterministic=True)))
    return reply


def _policy(resource_version: str) -> tuple[network_policy_pb2.NetworkPolicy, str]:
    message = network_policy_pb2.NetworkPolicy(name="allow", namespace="a", spec_json="{}", resource_version=resource_version)
    return message, hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=8).hexdigest()


def test_an_acked_current_policy_is_enforced_at_its_resource_version() -> None:
    message, version = _policy("7")
    held = from_client_status(_status(("a/allow", message, version, dump_pb2.ACKED)))
    assert held.nodes_enforcing("NetworkPolicy", "a/allow", "7") == ["node-1"]
    assert held.all_hold({("NetworkPolicy", "a/allow"): "7"})


def test_a_deleted_policy_still_counts_as_held_until_the_node_acks_the_deletion() -> None:
    _, version = _policy("7")
    pending = from_client_status(_status(("a/allow", None, version, dump_pb2.REQUESTED)))
    assert pending.held[("NetworkPolicy", "a/allow")] == {"node-1": REMOVING}
    assert not pending.all_hold({("NetworkPolicy", "a/allow"): None})
    done = from_client_status(_status())
    assert done.all_hold({("NetworkPolicy", "a/allow"): None})
