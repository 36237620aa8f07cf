"""tulle-control's own TLS identity on its mTLS ports: a serving certificate for
`spiffe://<td>/ns/tulle-system/sa/tulle-control` (plus DNS names for clients that check
the host they dialled), issued by its own CA, renewed at half-life, and gRPC server
credentials that require a client certificate from the same CA.

gRPC asks `_fetch` at each new handshake; it answers with a new configuration only when
the serving certificate is due, so connections in flight keep theirs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import control_plane_identity

SERVING_TTL = dt.timedelta(hours=24)
DNS_NAMES = ("tulle-control", "localhost")


class ServingIdentity:
    def __init__(self, ca: CertificateAuthority, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 ttl: dt.timedelta = SERVING_TTL) -> None:
        self._ca = ca
        self._clock = clock
        self._ttl = ttl
        self._renew_at = clock()
        self._config = self._issue()

    def _issue(self) -> grpc.ServerCertificateConfiguration:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._clock()
        issued = self._ca.issue_for_key(key.public_key(), control_plane_identity(self._ca.trust_domain), now,
                                        self._ttl, DNS_NAMES)
        self._renew_at = now + (issued.certificate.not_valid_after_utc - now) / 2
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, issued.chain_pem())], root_certificates=self._ca.trust_bundle_pem())

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        if self._clock() < self._renew_at:
            return None
        self._config = self._issue()
        return self._config

    def server_credentials(self) -> grpc.ServerCredentials:
        """mTLS: a client without a certificate from this CA cannot even finish the handshake."""
        return grpc.dynamic_ssl_server_credentials(self._config, self._fetch, require_client_authentication=True)
