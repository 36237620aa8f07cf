"""Named TLS secrets (Envoy's envoy.extensions.transport_sockets.tls.v3.Secret), held in
memory and replaced whole.

Rules:
- A secret is either a certificate (`tls_certificate`: chain and private key) or a trust
  bundle (`validation_context`: trusted_ca); PEM comes inline (`inline_bytes`,
  `inline_string`) or from a file read once at parse time (`filename`).
- The store is the one place SDS writes to; every change bumps `version`, which is what
  the transport sockets compare to know that the SSL context they built is stale.
- Validation happens before anything is stored: a bad response changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret as SecretProto
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True, slots=True)
class CertificateSecret:
    chain_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class TrustBundle:
    trusted_ca_pem: bytes


Secret = CertificateSecret | TrustBundle


def data_source(message: Message, path: str) -> bytes:
    """The bytes of an envoy.config.core.v3.DataSource."""
    reject_unsupported(message, path, ("inline_bytes", "inline_string", "filename"))
    kind = message.WhichOneof("specifier")
    if kind == "inline_bytes":
        return bytes(message.inline_bytes)
    if kind == "inline_string":
        return str(message.inline_string).encode()
    if kind == "filename":
        try:
            return Path(message.filename).read_bytes()
        except OSError as error:
            raise ConfigError(join(path, "filename"), f"cannot be read: {error.strerror}") from None
    raise ConfigError(path, "one of inline_bytes, inline_string, filename is required")


def certificate_from_proto(message: Message, path: str) -> CertificateSecret:
    """An envoy TlsCertificate: certificate_chain and private_key."""
    reject_unsupported(message, path, ("certificate_chain", "private_key"))
    for name in ("certificate_chain", "private_key"):
        if not message.HasField(name):
            raise ConfigError(join(path, name), "is required")
    return CertificateSecret(data_source(message.certificate_chain, join(path, "certificate_chain")),
                             data_source(message.private_key, join(path, "private_key")))


def secret_from_proto(message: SecretProto, path: str) -> Secret:
    reject_unsupported(message, path, ("name", "tls_certificate", "validation_context"))
    if message.HasField("tls_certificate"):
        return certificate_from_proto(message.tls_certificate, join(path, "tls_certificate"))
    if message.HasField("validation_context"):
        here = join(path, "validation_context")
        reject_unsupported(message.validation_context, here, ("trusted_ca",))
        if not message.validation_context.HasField("trusted_ca"):
            raise ConfigError(join(here, "trusted_ca"), "is required")
        return TrustBundle(data_source(message.validation_context.trusted_ca, join(here, "trusted_ca")))
    raise ConfigError(path, "one of tls_certificate, validation_context is required")


class SecretStore:
    """The secrets delivered by SDS, by name; `version` counts changes."""

    def __init__(self) -> None:
        self._secrets: dict[str, Secret] = {}
        self.version = 0

    def get(self, name: str) -> Secret | None:
        return self._secrets.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._secrets))

    def update(self, secrets: Mapping[str, Secret]) -> None:
        """Set these secrets (others stay); a change bumps the version."""
        changed = {name: secret for name, secret in secrets.items() if self._secrets.get(name) != secret}
        if changed:
            self._secrets.update(changed)
            self.version += 1


def decode_secrets(response: DiscoveryResponse) -> dict[str, Secret]:
    """Every secret of a response, or ConfigError naming the first bad one."""
    secrets: dict[str, Secret] = {}
    for index, resource in enumerate(response.resources):
        message = SecretProto()
        if not resource.Unpack(message):
            raise ConfigError(f"resources[{index}]", f"is {resource.type_url}, expected Secret")
        if not message.name:
            raise ConfigError(f"resources[{index}].name", "must not be empty")
        secrets[message.name] = secret_from_proto(message, f"Secret {message.name}")
    return secrets
