"""Who is on the other end of an ADS stream, read from its xDS `Node`.

Rules (Istio's node id format, so Istio bootstraps work unchanged):
- `node.id` is `<type>~<ip>~<id>~<dns-domain>`. Type `sidecar` (or `router`) is a proxy
  whose `<id>` is `<pod>.<namespace>`; type `agent` is a tulle-agent whose `<id>` is its
  node name and `<ip>` its underlay address.
- `node.metadata` NAME / NAMESPACE override the pod and namespace taken from the id;
  `INTERCEPTION_MODE: NONE` means no traffic capture (Istio's meaning: outbound listeners
  bind 127.0.0.1:<port> instead of being reached through the 15001 capture listener);
  `GENERATOR: grpc`, or a gRPC user agent, selects proxyless gRPC config.
- Anything else is an unknown proxy: it gets outbound config for every service.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from envoy.config.core.v3 import base_pb2


class NodeKind(Enum):
    SIDECAR = "sidecar"
    PROXYLESS = "proxyless"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    id: str
    kind: NodeKind
    ip: str
    name: str  # pod name (sidecar, proxyless) or node name (agent); "" when unknown
    namespace: str
    intercept: bool  # sidecar: traffic captured by the 15001 listener

    @classmethod
    def from_node(cls, node: base_pb2.Node) -> NodeIdentity:
        parts = node.id.split("~")
        meta = node.metadata.fields
        kind = NodeKind.SIDECAR
        ip = name = namespace = ""
        if len(parts) == 4 and parts[0] == "agent":
            kind, ip, name = NodeKind.AGENT, parts[1], parts[2]
        elif len(parts) == 4 and parts[0] in ("sidecar", "router"):
            ip = parts[1]
            name, _, namespace = parts[2].partition(".")
        if "NAME" in meta and kind is not NodeKind.AGENT:
            name = meta["NAME"].string_value
        if "NAMESPACE" in meta:
            namespace = meta["NAMESPACE"].string_value
        generator = meta["GENERATOR"].string_value if "GENERATOR" in meta else ""
        if kind is NodeKind.SIDECAR and (
            generator == "grpc" or node.user_agent_name.lower().startswith("grpc")
        ):
            kind = NodeKind.PROXYLESS
        mode = meta["INTERCEPTION_MODE"].string_value if "INTERCEPTION_MODE" in meta else ""
        return cls(node.id, kind, ip, name, namespace, intercept=mode.upper() != "NONE")
