"""Which version of each object every tulle-agent enforces, read over CSDS.

Theory: an agent ACKs a push only after it applied it (compiled and committed the nft
transaction, or programmed the overlay); a NACK carries the error. CSDS lists, per
connected node and resource, the version the node ACKed (`version_info`, the hash of the
resource's bytes) next to the resource the control plane currently holds for it
(`xds_config`, serialized deterministically, so hashing it gives the same version). A node
holds the current resource when the two agree; the resource names the stored object's
resourceVersion, so "enforced" is exact: node N enforces version V of object O. A deleted
object stays listed for a node, with its ACKed version and no `xds_config`, until the node
ACKs the deletion: until then it counts as still held (`DELETION_PENDING`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import symbol_database

import proto.tulle.netpolicy.v1.namespace_pb2
import proto.tulle.netpolicy.v1.network_policy_pb2
import proto.tulle.netpolicy.v1.pod_pb2  # noqa: F401 - registers the agent types for unpacking
from control.xds.proxy_commands import fetch


@dataclass
class Enforcement:
    agents: list[str] = field(default_factory=list)  # node names of connected agents
    # (type suffix e.g. "NetworkPolicy", resource name) -> node -> resourceVersion held
    held: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def nodes_enforcing(self, kind: str, name: str, resource_version: str) -> list[str]:
        return sorted(n for n, v in self.held.get((kind, name), {}).items() if v == resource_version)

    def all_hold(self, wanted: Mapping[tuple[str, str], str | None]) -> bool:
        """Every agent holds each (kind, name) at the given resourceVersion (None: holds
        nothing of that name, i.e. it saw the deletion)."""
        for key, version in wanted.items():
            holders = self.held.get(key, {})
            for agent in self.agents:
                if (version is None) != (agent not in holders) or (version is not None and holders[agent] != version):
                    return False
        return True


# What a node holds of an object the control plane has deleted, until it ACKs the deletion.
DELETION_PENDING = "(deletion not yet acknowledged)"


def read(xds_address: str) -> Enforcement:
    return from_client_status(fetch(xds_address, csds_pb2.ClientStatusRequest()))


def from_client_status(reply: csds_pb2.ClientStatusResponse) -> Enforcement:
    out = Enforcement()
    db = symbol_database.Default()
    for config in reply.config:
        parts = config.node.id.split("~")
        if len(parts) != 4 or parts[0] != "agent":
            continue
        node = parts[2]
        out.agents.append(node)
        for entry in config.generic_xds_configs:
            if not entry.HasField("xds_config"):
                # Listed with an ACKed version but no longer held by the control plane: the
                # node has not ACKed the deletion yet, so it may still enforce the object.
                if entry.version_info:
                    out.held.setdefault((entry.type_url.rsplit(".", 1)[-1], entry.name), {})[node] = DELETION_PENDING
                continue
            if entry.client_status != dump_pb2.ACKED:
                continue
            if hashlib.blake2b(entry.xds_config.value, digest_size=8).hexdigest() != entry.version_info:
                continue  # the node ACKed an older version of it
            kind = entry.type_url.rsplit(".", 1)[-1]
            message = db.GetSymbol(entry.xds_config.type_url.rsplit("/", 1)[-1])()
            entry.xds_config.Unpack(message)
            version = str(getattr(message, "resource_version", ""))
            out.held.setdefault((kind, entry.name), {})[node] = version
    out.agents.sort()
    return out
