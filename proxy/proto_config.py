"""Small readers shared by the converters from Envoy's v3 protos to Tulle's typed config.

Paths are written the way an operator reads the YAML:
`static_resources.clusters[0].circuit_breakers`; unsupported fields are rejected with
`proxy.config_error.reject_unsupported`.
"""

from __future__ import annotations

from google.protobuf.message import Message


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def seconds(duration: Message) -> float:
    """A google.protobuf.Duration as float seconds."""
    return duration.seconds + duration.nanos / 1e9
