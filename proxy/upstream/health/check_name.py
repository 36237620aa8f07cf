"""HealthCheck.name, which Envoy 1.40 requires when a cluster has several health checks but
which the xds-protos release in use (1.85.0) does not know yet.

Rules: the field is number 27, a string (found by trying: Envoy 1.40 accepts field 27 of a
binary HealthCheck as the name, any other unknown number as an unknown field). A message
read from the wire (xDS) keeps it among its unknown fields; a YAML/JSON bootstrap has it as
a `name` key, which `take_names` removes before the document is parsed into messages and
`put_names` restores as that unknown field afterwards. `health_check_name` reads it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

NAME_FIELD = 27
_LENGTH_DELIMITED = 2


def health_check_name(message: Message) -> str:
    for unknown in UnknownFieldSet(message):
        if unknown.field_number == NAME_FIELD and unknown.wire_type == _LENGTH_DELIMITED:
            return bytes(unknown.data).decode("utf-8", "replace")
    return ""


def set_health_check_name(message: Message, name: str) -> None:
    message.MergeFromString(_varint(NAME_FIELD << 3 | _LENGTH_DELIMITED) + _varint(len(name.encode()))
                            + name.encode())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def take_names(document: Any) -> dict[tuple[int, int], str]:
    """Remove `name` from the bootstrap's static clusters' health checks:
    {(cluster index, health check index): name}."""
    names: dict[tuple[int, int], str] = {}
    resources = document.get("static_resources") if isinstance(document, dict) else None
    clusters = resources.get("clusters") if isinstance(resources, dict) else None
    if not isinstance(clusters, list):
        return names
    for cluster_index, cluster in enumerate(clusters):
        checks = cluster.get("health_checks") if isinstance(cluster, dict) else None
        if not isinstance(checks, list):
            continue
        for check_index, check in enumerate(checks):
            if isinstance(check, dict) and isinstance(check.get("name"), str):
                names[(cluster_index, check_index)] = check.pop("name")
    return names


def put_names(clusters: Any, names: dict[tuple[int, int], str]) -> None:
    """Restore what `take_names` took into the parsed Cluster messages."""
    for (cluster_index, check_index), name in names.items():
        set_health_check_name(clusters[cluster_index].health_checks[check_index], name)
