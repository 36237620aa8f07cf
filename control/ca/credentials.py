"""Credentials for Tulle's own clients on tulle-control's mTLS ports: operators (meshctl)
and tulle-agents on other machines, minted by `tulle-control issue-cert` on the control
host, so the CA key never leaves it.

    tulle-control issue-cert --kind operator --name alice --out ~/.tulle
    tulle-control issue-cert --kind agent --name node-2 --out /tmp/node-2   # copy to node-2

The key is made here and written beside the certificate; the directory then holds
`cert.pem` (the certificate, then any intermediates), `key.pem` (mode 0600) and `ca.pem`
(the trust bundle, to verify tulle-control with). Identities (see `control.caller`):
`spiffe://<td>/ns/tulle-system/sa/tulle-operator.<name>` and
`spiffe://<td>/ns/tulle-system/sa/tulle-agent.<node>`. Their lifetime is set at issue
(`--ttl`, default 30 days). An agent renews its own before it ends, for the same lifetime
(`control.ca.service.sign_agent`, netpolicy/agent/control_credentials.py); an operator
issues a new one and points meshctl at it.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control.ca.authority import CertificateAuthority, IssuedCertificate
from control.ca.spiffe import SpiffeId, agent_identity, operator_identity

DEFAULT_TTL = dt.timedelta(days=30)
CERT_FILE, KEY_FILE, CA_FILE = "cert.pem", "key.pem", "ca.pem"


class CredentialKind(Enum):
    OPERATOR = "operator"
    AGENT = "agent"

    def identity(self, trust_domain: str, name: str) -> SpiffeId:
        """Raises InvalidSpiffeId when `name` is not a DNS subdomain."""
        return (operator_identity if self is CredentialKind.OPERATOR else agent_identity)(trust_domain, name)


@dataclass(frozen=True)
class WrittenCredentials:
    identity: SpiffeId
    directory: Path
    not_after: dt.datetime


def issue_credentials(ca: CertificateAuthority, kind: CredentialKind, name: str, out: Path, now: dt.datetime,
                      ttl: dt.timedelta = DEFAULT_TTL) -> WrittenCredentials:
    identity = kind.identity(ca.trust_domain, name)
    key = ec.generate_private_key(ec.SECP256R1())
    issued: IssuedCertificate = ca.issue_for_key(key.public_key(), identity, now, ttl)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / KEY_FILE, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    _write(out / CERT_FILE, issued.chain_pem(), 0o644)
    _write(out / CA_FILE, ca.trust_bundle_pem(), 0o644)
    return WrittenCredentials(identity, out, issued.certificate.not_valid_after_utc)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Created with its final mode (a key is never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)
