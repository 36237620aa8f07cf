"""tulle-proxy as its own identity agent (`tulle-proxy --identity-socket PATH`), the role
istio-agent plays beside Envoy: the private key is generated in this process and never
leaves it; only a CSR goes to the node agent's identity socket, which asks the kernel
which pod is calling (SO_PEERCRED, then the caller's network namespace;
netpolicy/agent/identity.py) and has tulle-control's CA sign that pod's SPIFFE ID.

Rules:
- The certificate and the trust bundle become the secrets `default` and `ROOTCA`, the
  names tulle-control's listeners and clusters reference over SDS, so the transport
  sockets cannot tell them from SDS secrets (same store, same version bump on rotation:
  new handshakes use the new certificate, connections in flight keep theirs).
- Renewal at half the certificate's remaining lifetime (the CA backdates not-before, so
  the middle of the validity would come early); a failed request is retried with
  capped exponential back-off while the old certificate serves.
- Protocol of the identity socket (one request per connection): send
  {"csr": PEM, "ttlSeconds": 0}, read {"identity", "certChain": [PEM…], "trustBundle": PEM}
  or {"error": "…"}.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from proxy.tls.secrets import CertificateSecret, SecretStore, TrustBundle
from proxy.tls.workload_identity import new_key_and_csr, renewal_time, retry_delay

log = logging.getLogger("tulle.proxy.identity")

CERTIFICATE: Final = "default"
TRUST_BUNDLE: Final = "ROOTCA"
NAMES: Final = frozenset({CERTIFICATE, TRUST_BUNDLE})


class IdentityError(RuntimeError):
    """The identity socket answered with an error or something unreadable."""


@dataclass(frozen=True, slots=True)
class Issued:
    identity: str
    chain_pem: bytes          # the leaf first
    trust_bundle_pem: bytes


async def request_identity(socket_path: str, csr_pem: bytes, ttl_seconds: int = 0) -> Issued:
    """One request on the identity socket: the CSR in, the certificate chain out (raises
    IdentityError with the agent's refusal, OSError when it cannot be reached)."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(json.dumps({"csr": csr_pem.decode(), "ttlSeconds": ttl_seconds}).encode())
        await writer.drain()
        writer.write_eof()
        answer = json.loads(await reader.read())
    finally:
        writer.close()
    if not isinstance(answer, dict) or "error" in answer or not answer.get("certChain"):
        raise IdentityError(str(answer.get("error") if isinstance(answer, dict) else answer))
    return Issued(str(answer.get("identity", "")), "".join(answer["certChain"]).encode(),
                  str(answer["trustBundle"]).encode())


def renewal_delay(chain_pem: bytes, now: dt.datetime) -> dt.timedelta:
    """How long until renewal: half of what is left of the leaf's validity."""
    return renewal_time(chain_pem, now) - now


class IdentityClient:
    """Serves `default` and `ROOTCA` into `store`; the same surface as an SDS client."""

    def __init__(self, socket_path: str, store: SecretStore) -> None:
        self.socket_path = socket_path
        self.store = store
        self.names: tuple[str, ...] = tuple(sorted(NAMES))
        self.identity = ""
        self._received = asyncio.Event()

    def subscribe(self, names: Iterable[str]) -> None:
        unknown = set(names) - NAMES
        if unknown:
            raise ValueError(f"the identity socket serves only {sorted(NAMES)}, not {sorted(unknown)}")

    async def ready(self, names: Iterable[str]) -> None:
        wanted = set(names)
        while any(self.store.get(name) is None for name in wanted):
            self._received.clear()
            await self._received.wait()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                chain = await self._renew()
                failures = 0
                delay = renewal_delay(chain, dt.datetime.now(dt.UTC))
            except asyncio.CancelledError:
                raise
            except (OSError, ValueError, IdentityError) as error:
                failures += 1
                delay = retry_delay(failures)
                log.warning("identity from %s failed (%s); retrying in %.0fs", self.socket_path, error,
                            delay.total_seconds())
            await asyncio.sleep(delay.total_seconds())

    async def _renew(self) -> bytes:
        key = new_key_and_csr()
        issued = await request_identity(self.socket_path, key.csr_pem)
        self.store.update({CERTIFICATE: CertificateSecret(issued.chain_pem, key.key_pem),
                           TRUST_BUNDLE: TrustBundle(issued.trust_bundle_pem)})
        self.identity = issued.identity
        self._received.set()
        log.info("identity %s from %s", self.identity, Path(self.socket_path).name)
        return issued.chain_pem
