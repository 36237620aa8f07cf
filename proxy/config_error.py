"""The one error type for configuration that tulle-proxy cannot honour.

Rule: every rejection names the offending field by its path in the Envoy v3
message (for example ``clusters[0].ring_hash_lb_config.hash_function``) and says
why, so an operator can fix the bootstrap or the xDS resource without guessing.
A ConfigError is raised while parsing, before anything is applied.
"""

from __future__ import annotations

from collections.abc import Collection

from google.protobuf.message import Message


class ConfigError(ValueError):
    """A configuration field that is invalid or not supported; str() is "PATH: REASON"."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def under(self, prefix: str) -> ConfigError:
        """The same error with its path placed under `prefix` (the enclosing field)."""
        path = f"{prefix}.{self.path}" if self.path else prefix
        return ConfigError(path, self.reason)


def reject_unsupported(message: Message, path: str, supported: Collection[str]) -> None:
    """Raise ConfigError for the first field set in `message` that is not in `supported`.

    Protobuf's ListFields() reports exactly the fields that are set (non-default
    scalars, present sub-messages), so nothing an operator wrote goes unnoticed.
    """
    for descriptor, _ in message.ListFields():
        if descriptor.name not in supported:
            raise ConfigError(f"{path}.{descriptor.name}" if path else descriptor.name, "not supported by tulle-proxy")
