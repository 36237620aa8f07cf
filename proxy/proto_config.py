"""Small readers shared by the converters from Envoy's v3 protos to Tulle's typed config.

Paths are written the way an operator reads the YAML:
`static_resources.clusters[0].circuit_breakers`; unsupported fields are rejected with
`proxy.config_error.reject_unsupported`.
"""

from __future__ import annotations

from google.protobuf.message import Message

from proxy.config_error import ConfigError


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def seconds(duration: Message) -> float:
    """A google.protobuf.Duration as float seconds."""
    return duration.seconds + duration.nanos / 1e9


def non_negative_seconds(message: Message, name: str, path: str) -> float | None:
    """The Duration field `name` in seconds, None when unset; a negative one is refused, as
    Envoy's validation does."""
    if not message.HasField(name):
        return None
    value = seconds(getattr(message, name))
    if value < 0:
        raise ConfigError(join(path, name), f"must not be negative, got {value:g}s")
    return value
