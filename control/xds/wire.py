"""Encoding of pushes as DiscoveryResponse / DeltaDiscoveryResponse bytes.

Protobuf messages concatenate: the encoding of a message with fields A and B is the
encoding of A followed by that of B. A response is therefore its small per-stream header
(type URL, version, nonce) followed by the entries each `Resource` encoded once, shared by
every stream that is sent it.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control.xds.stream import Push

CONTROL_PLANE = base_pb2.ControlPlane(identifier="tulle-control")


def encode_sotw(push: Push) -> bytes:
    header = discovery_pb2.DiscoveryResponse(
        version_info=push.version_info,
        type_url=push.type_url,
        nonce=push.nonce,
        control_plane=CONTROL_PLANE,
    ).SerializeToString()
    return header + b"".join(r.sotw_chunk for r in push.resources)


def encode_delta(push: Push) -> bytes:
    header = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=push.version_info,
        type_url=push.type_url,
        nonce=push.nonce,
        removed_resources=push.removed,
        control_plane=CONTROL_PLANE,
    ).SerializeToString()
    return header + b"".join(r.delta_chunk for r in push.resources)
