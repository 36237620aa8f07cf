"""meshctl's credentials for tulle-control's mTLS ports: an operator certificate from
`tulle-control issue-cert --kind operator` (cert.pem, key.pem, ca.pem).

Where they come from, first match wins: `--cert/--key/--ca`, then $TULLE_CERT,
$TULLE_KEY, $TULLE_CA; `--cert` alone (or $TULLE_CERT alone) names cert.pem and finds
key.pem and ca.pem beside it. They are used for HOST:PORT servers only: the local unix
socket needs none (it is root's). tulle-control is verified by its serving
certificate: issued by the same CA, for the name `tulle-control`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

CONTROL_SERVER_NAME = "tulle-control"  # a DNS name in tulle-control's serving certificate


class CredentialsError(Exception):
    pass


@dataclass(frozen=True)
class ClientCredentials:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def find(cls, cert: str | None, key: str | None, ca: str | None) -> ClientCredentials | None:
        """From the flags' values (which fall back to the environment in click)."""
        if not (cert or key or ca):
            return None
        if not cert:
            raise CredentialsError("--key and --ca need --cert (or $TULLE_CERT)")
        cert_path = Path(cert)
        found = cls(cert_path, Path(key) if key else cert_path.with_name("key.pem"),
                    Path(ca) if ca else cert_path.with_name("ca.pem"))
        for flag, path in (("--cert", found.cert), ("--key", found.key), ("--ca", found.ca)):
            if not path.is_file():
                raise CredentialsError(f"{flag}: {path} is not a readable file")
        return found

    def channel_credentials(self) -> grpc.ChannelCredentials:
        try:
            return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes())
        except OSError as e:
            raise CredentialsError(f"cannot read client credentials: {e}") from None


def open_channel(address: str, credentials: ClientCredentials | None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to tulle-control: mTLS to HOST:PORT when credentials are given, else plaintext."""
    if credentials is None or address.startswith("unix:"):
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, credentials.channel_credentials(),
                               options=[*options, ("grpc.ssl_target_name_override", CONTROL_SERVER_NAME)])
