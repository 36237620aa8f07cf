"""Which version of each object every tulle-agent enforces, read over CSDS.

Theory: an agent ACKs a push only after it applied it (compiled and committed the nft
transaction, or programmed the overlay); a NACK carries the error. CSDS lists, per
connected node and resource, the version the node ACKed (`version_info`, the hash of the
resource's bytes) next to the resource the control plane currently holds for it
(`xds_config`, serialized deterministically, so hashing it gives the same version). A node
holds the current resource when the two agree; the resource names the stored object's
resourceVersion, so "enforced" is exact: node N enforces version V of object O.
A resource the control plane has dropped (the object was deleted) is still listed, without
`xds_config`, while the node has not ACKed its removal: the node then still enforces the
old object, recorded as held at `REMOVING` — a deletion is in force only once it is gone
from the listing.

Objects are keyed (kind, name) as the config API names them: ("NetworkPolicy",
"<ns>/<name>"), ("Pod", "<ns>/<name>"), ("Namespace", name), and the agents' one
AdminNetworkPolicy type is split back into ("AdminNetworkPolicy", name) and
("BaselineAdminNetworkPolicy", name) by its resource name (`<name>`, `baseline/<name>`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import symbol_database

import proto.tulle.netpolicy.v1.admin_network_policy_pb2
import proto.tulle.netpolicy.v1.namespace_pb2
import proto.tulle.netpolicy.v1.network_policy_pb2
import proto.tulle.netpolicy.v1.pod_pb2  # noqa: F401 - registers the agent types for unpacking
from control.xds.proxy_commands import fetch

REMOVING = "<removing>"  # held while a node has not ACKed an object's removal (never a resourceVersion)


@dataclass
class Enforcement:
    agents: list[str] = field(default_factory=list)  # node names of connected agents
    # (kind e.g. "NetworkPolicy", object name as above) -> node -> resourceVersion held
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
            key = _object_key(entry.type_url.rsplit(".", 1)[-1], entry.name)
            if not entry.HasField("xds_config"):
                if entry.version_info:  # deleted, but the node still holds what it last ACKed
                    out.held.setdefault(key, {})[node] = REMOVING
                continue
            if entry.client_status != dump_pb2.ACKED:
                continue
            if hashlib.blake2b(entry.xds_config.value, digest_size=8).hexdigest() != entry.version_info:
                continue  # the node ACKed an older version of it
            message = db.GetSymbol(entry.xds_config.type_url.rsplit("/", 1)[-1])()
            entry.xds_config.Unpack(message)
            out.held.setdefault(key, {})[node] = str(getattr(message, "resource_version", ""))
    out.agents.sort()
    return out


def _object_key(type_suffix: str, resource_name: str) -> tuple[str, str]:
    if type_suffix == "AdminNetworkPolicy" and resource_name.startswith("baseline/"):
        return "BaselineAdminNetworkPolicy", resource_name.removeprefix("baseline/")
    return type_suffix, resource_name
