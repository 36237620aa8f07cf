"""The CA inside tulle-control: a `control.plane` component that loads (or, on first
start, creates) the certificate authority and serves `CertificateService` beside the
config API.

Where the CA comes from:
- default: a self-signed root under `<state dir>/ca/` (key mode 0600), created once and
  reused on every later start, so SVIDs stay valid across restarts;
- `--ca-cert/--ca-key[/--ca-chain]`: an operator-supplied root, or an intermediate with
  its chain up to the root (the key file must be 0600 or tighter, else start fails).

Where it is served: on the control plane's own gRPC server. Whoever can open its
root-only unix socket is root on this machine, so the node an agent names is trusted
there (see `attestation`); on that server's TCP listeners only an agent certificate
(mTLS, `--listen-tls`) proves a node, so a plaintext client obtains nothing. The pod
named in a request is read from the registry per request.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from control.ca.authority import DEFAULT_TTL, CertificateAuthority
from control.ca.service import AsyncCertificateService, agent_node_of_channel
from control.ca.serving import ServingIdentity
from control.registry import NotFoundError
from proto.tulle.security.v1 import ca_pb2_grpc

if TYPE_CHECKING:
    from control.plane import ControlPlane

log = logging.getLogger("tulle.control.ca")

DEFAULT_TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class CaConfig:
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    svid_ttl: dt.timedelta = DEFAULT_TTL
    cert: Path | None = None  # operator-supplied signing certificate …
    key: Path | None = None  # … and its key (both or neither)
    chain: Path | None = None  # intermediates above `cert`, then the root

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--ca-cert and --ca-key go together")
        if self.chain is not None and self.cert is None:
            raise ValueError("--ca-chain needs --ca-cert and --ca-key")
        if self.svid_ttl <= dt.timedelta(0):
            raise ValueError(f"--svid-ttl must be positive, not {self.svid_ttl}")


class CaService:
    def __init__(self, config: CaConfig | None = None) -> None:
        self.config = config or CaConfig()
        self.ca: CertificateAuthority | None = None
        self._serving: ServingIdentity | None = None

    def load(self, state_dir: Path, now: dt.datetime) -> CertificateAuthority:
        c = self.config
        if c.cert is not None and c.key is not None:
            return CertificateAuthority.from_files(c.cert, c.key, c.trust_domain, c.chain)
        return CertificateAuthority.load_or_create(state_dir / "ca", c.trust_domain, now)

    def register(self, server: grpc.aio.Server, plane: ControlPlane) -> None:
        self.ca = self.load(plane.config.state_dir, dt.datetime.now(dt.UTC))
        registry = plane.registry

        async def pod(namespace: str, name: str) -> dict[str, Any] | None:
            try:
                return await registry.get("Pod", namespace, name)
            except NotFoundError:
                return None

        ca_pb2_grpc.add_CertificateServiceServicer_to_server(
            AsyncCertificateService(self.ca, pod, self.config.svid_ttl,
                                    node_of_channel=agent_node_of_channel(self.ca.trust_domain)), server
        )
        log.info("CA for trust domain %s serving (signer %s)", self.ca.trust_domain, self.ca.signer.subject.rfc4514_string())

    def server_credentials(self) -> grpc.ServerCredentials:
        """The credentials of tulle-control's mTLS listeners: its own serving certificate,
        and client certificates required from this CA."""
        assert self.ca is not None, "register() first"
        if self._serving is None:
            self._serving = ServingIdentity(self.ca)
        return self._serving.server_credentials()

    async def start(self, plane: ControlPlane) -> None:
        pass

    async def stop(self) -> None:
        pass
