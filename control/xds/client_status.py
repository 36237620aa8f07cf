"""What each connected node holds, as Envoy's Client Status Discovery Service (CSDS)
reports it — the API `meshctl proxy-status` and `proxy-config` read.

Two shapes, like istiod's sync status:
- with `exclude_resource_contents`, one entry per resource type (name empty):
  `version_info` is the last ACKed version of that type; `config_status` is SYNCED
  (everything sent was ACKed), STALE (a push awaits its ACK), ERROR (the last answer was a
  NACK; `error_state` carries its message, the rejected version and when) or NOT_SENT;
- otherwise, one entry per resource the control plane sends the node, with the resource
  itself in `xds_config`, its version, and ACKED / REQUESTED (in flight) / NACKED.
The node's Tulle metadata says what it is: `TULLE_KIND` (sidecar, proxyless, agent),
`TULLE_VARIANT` (sotw, delta), and `TULLE_PENDING`, pushes awaiting an ACK per type.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2, timestamp_pb2

from control.xds.node_identity import NodeIdentity
from control.xds.stream import XdsStream

ConnectedNode = tuple[NodeIdentity, XdsStream]


def client_status(
    nodes: Iterable[ConnectedNode],
    request: csds_pb2.ClientStatusRequest,
    monotonic_now: float,
    wall_now: float,
) -> csds_pb2.ClientStatusResponse:
    out = csds_pb2.ClientStatusResponse()
    for identity, stream in nodes:
        if not _matches(identity.id, request):
            continue
        config = out.config.add()
        config.node.id = identity.id
        config.node.metadata.update(
            {
                "TULLE_KIND": identity.kind.value,
                "TULLE_VARIANT": stream.variant.value,
                "TULLE_PENDING": {s.type_url: s.pending for s in stream.status()},
            }
        )

        def stamp(at: float | None) -> timestamp_pb2.Timestamp | None:
            if at is None:
                return None
            ts = timestamp_pb2.Timestamp()
            ts.FromNanoseconds(int((wall_now - (monotonic_now - at)) * 1e9))
            return ts

        for status in stream.status():
            state = stream.types[status.type_url]
            if request.exclude_resource_contents:
                entry = config.generic_xds_configs.add(type_url=status.type_url, version_info=status.acked_version)
                nacked = status.last_nack is not None and (status.acked_at is None or status.last_nack.at >= status.acked_at)
                if nacked:
                    entry.config_status = csds_pb2.ERROR
                elif status.pending:
                    entry.config_status = csds_pb2.STALE
                elif status.acked_version:
                    entry.config_status = csds_pb2.SYNCED
                else:
                    entry.config_status = csds_pb2.NOT_SENT
                if (ts := stamp(status.acked_at)) is not None:
                    entry.last_updated.CopyFrom(ts)
                if status.last_nack is not None:
                    entry.error_state.details = status.last_nack.message
                    entry.error_state.version_info = status.last_nack.version_info
                    if (ts := stamp(status.last_nack.at)) is not None:
                        entry.error_state.last_update_attempt.CopyFrom(ts)
                continue
            current = stream.resources.get(status.type_url) if stream.resources is not None else {}
            for name in sorted(set(state.sent) | set(state.acked)):
                resource = current.get(name)
                entry = config.generic_xds_configs.add(
                    type_url=status.type_url, name=name, version_info=state.acked.get(name, "")
                )
                if resource is not None:
                    entry.xds_config.CopyFrom(any_pb2.Any(type_url=resource.type_url, value=resource.message.SerializeToString()))
                if name in state.resync:
                    entry.client_status = dump_pb2.NACKED
                elif state.acked.get(name) == state.sent.get(name):
                    entry.client_status = dump_pb2.ACKED
                else:
                    entry.client_status = dump_pb2.REQUESTED
    return out


def _matches(node_id: str, request: csds_pb2.ClientStatusRequest) -> bool:
    if not request.node_matchers and not request.node.id:
        return True
    if request.node.id and request.node.id == node_id:
        return True
    for matcher in request.node_matchers:
        m = matcher.node_id
        kind = m.WhichOneof("match_pattern")
        if (
            (kind == "exact" and node_id == m.exact)
            or (kind == "prefix" and node_id.startswith(m.prefix))
            or (kind == "suffix" and node_id.endswith(m.suffix))
            or (kind == "contains" and m.contains in node_id)
        ):
            return True
    return False

