"""Who is calling tulle-control: the peer of a gRPC request, classified once by the
channel it came over and the certificate it presented, so that the config API, xDS and
the CA decide with the same words.

Rules (first match wins):
- A peer on a unix socket is LOCAL. tulle-control's own socket is root-only (mode 0600
  in a 0700 directory) and a `--xds-listen unix:PATH` socket is made 0600, so only root
  on this machine connects: trusted with everything, like root itself.
- A TCP peer without TLS is INSECURE. Only listeners the operator opened plaintext on
  purpose accept those (`--listen`, `--xds-listen`; each logs a warning at start), so
  whoever reaches them is trusted like LOCAL — that is what plaintext means, and why
  those flags are for a private network such as a lab's underlay.
- A TCP peer with TLS finished an mTLS handshake on a `--listen-tls` port: its chain
  leads to Tulle's CA and it is within its validity period (gRPC refused it otherwise).
  Its SPIFFE ID then says what it is:

    spiffe://<td>/ns/tulle-system/sa/tulle-operator.<name>   OPERATOR <name>
    spiffe://<td>/ns/tulle-system/sa/tulle-agent.<node>      AGENT of <node>
    spiffe://<td>/ns/tulle-system/sa/tulle-control           CONTROL_PLANE (a replica)
    spiffe://<td>/ns/<ns>/sa/<sa>, <ns> not tulle-system     WORKLOAD (a sidecar)
    anything else (no SPIFFE ID, another trust domain)       STRANGER

Workloads can never hold a `tulle-system` identity: attestation refuses to issue one
(`control.ca.attestation`), and only `tulle-control issue-cert`, run on the control
host with the CA key, mints operator and agent certificates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from control.ca.spiffe import (
    AGENT_PREFIX,
    CONTROL_PLANE_ACCOUNT,
    OPERATOR_PREFIX,
    SYSTEM_NAMESPACE,
    InvalidSpiffeId,
    SpiffeId,
)


class Role(Enum):
    LOCAL = "local"
    INSECURE = "insecure"
    OPERATOR = "operator"
    AGENT = "agent"
    CONTROL_PLANE = "control-plane"
    WORKLOAD = "workload"
    STRANGER = "stranger"


@dataclass(frozen=True, slots=True)
class Caller:
    role: Role
    name: str = ""  # the operator's name or the agent's node
    identity: SpiffeId | None = None
    peer: str = ""  # gRPC's peer address, for messages

    @property
    def trusted(self) -> bool:
        """A channel that carries no certificate and is trusted as it is (see the rules)."""
        return self.role in (Role.LOCAL, Role.INSECURE)

    def __str__(self) -> str:
        if self.identity is not None:
            return str(self.identity)
        return f"{self.role.value} client {self.peer}".strip()

    @classmethod
    def classify(cls, peer: str, tls: bool, spiffe_id: str, trust_domain: str) -> Caller:
        """`peer`: gRPC's peer address; `tls`: the channel is mTLS; `spiffe_id`: the URI
        SAN of the client certificate ("" when none)."""
        if peer.startswith("unix:"):
            return cls(Role.LOCAL, peer=peer)
        if not tls:
            return cls(Role.INSECURE, peer=peer)
        try:
            identity = SpiffeId.parse(spiffe_id)
        except InvalidSpiffeId:
            return cls(Role.STRANGER, peer=f"{peer} ({spiffe_id or 'no SPIFFE ID'})")
        if identity.trust_domain != trust_domain:
            return cls(Role.STRANGER, identity=identity, peer=peer)
        if identity.namespace != SYSTEM_NAMESPACE:
            return cls(Role.WORKLOAD, identity=identity, peer=peer)
        account = identity.service_account
        for prefix, role in ((OPERATOR_PREFIX, Role.OPERATOR), (AGENT_PREFIX, Role.AGENT)):
            if account.startswith(prefix) and len(account) > len(prefix):
                return cls(role, account[len(prefix):], identity, peer)
        if account == CONTROL_PLANE_ACCOUNT:
            return cls(Role.CONTROL_PLANE, identity=identity, peer=peer)
        return cls(Role.STRANGER, identity=identity, peer=peer)


def caller_of(context: Any, trust_domain: str) -> Caller:
    """The caller of the request `context` (a grpc or grpc.aio ServicerContext) serves."""
    auth = context.auth_context()
    tls = bool(auth.get("x509_pem_cert") or auth.get("peer_spiffe_id")
               or auth.get("transport_security_type") == [b"ssl"])
    uris = auth.get("peer_spiffe_id") or []
    return Caller.classify(str(context.peer()), tls, uris[0].decode() if uris else "", trust_domain)
