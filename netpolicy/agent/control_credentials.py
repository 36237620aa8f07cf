"""tulle-agent's own credentials for tulle-control's mTLS port, and their renewal.

An agent on another host starts with the certificate `tulle-control issue-cert --kind
agent --name NODE` wrote (`--cert`, `--key`, `--ca`); from then on it renews that
certificate itself, as the kubelet rotates its client certificate:

- When: at half the certificate's remaining lifetime, counted from when the agent got it
  (`proxy.tls.workload_identity.renewal_time`, the rule sidecars follow); a failed
  renewal is retried with capped exponential back-off while the current one serves.
- How: a new P-256 key made here (it never leaves the agent), a CSR to tulle-control's
  CertificateService with `node_agent` set, over mTLS with the current certificate. The
  CA signs only the node that certificate names, for no longer than it lived.
- Then: the key and chain replace `--key` and `--cert` on disk (the key written 0600;
  each file replaced whole, the key first, so a restart finds a pair; a crash between
  the two renames leaves `cert.pem.next`, which the next start completes), and in memory,
  where `generation` moves on: every channel opened afterwards presents the new
  certificate, and the agent's long-lived channels (the config API, the CA client)
  reopen at their next call. A connection already authenticated stays up (its ADS
  stream keeps its state and goes on ACKing), as Envoy's and the Kubernetes API
  server's connections do; a stream that breaks reconnects with the new certificate.
- The trust bundle (`--ca`) is not touched: it changes only when the operator changes
  the root.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc
from proxy.tls.workload_identity import new_key_and_csr, renewal_time, retry_delay

log = logging.getLogger("tulle.agent.credentials")

# A DNS name in tulle-control's serving certificate (control.ca.serving; the agent does
# not import control): what the agent checks the server it dialled is.
CONTROL_SERVER_NAME = "tulle-control"
_NEXT = ".next"


class CredentialsError(RuntimeError):
    pass


class ControlTls:
    """The agent's certificate (and chain), key and Tulle's trust bundle: PEM files read
    at first use, then held in memory and replaced whole by `replace`."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.cert = cert
        self.key = key
        self.ca = ca
        self._lock = threading.Lock()
        self._pem: tuple[bytes, bytes, bytes] | None = None
        self.generation = 0

    def pem(self) -> tuple[bytes, bytes, bytes]:
        """(chain, key, trust bundle), as one consistent set."""
        with self._lock:
            if self._pem is None:
                _finish_interrupted_swap(self.cert, self.key)
                try:
                    self._pem = (self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes())
                except OSError as e:
                    raise CredentialsError(f"cannot read the agent's credentials: {e}") from None
            return self._pem

    def credentials(self) -> grpc.ChannelCredentials:
        chain, key, ca = self.pem()
        return grpc.ssl_channel_credentials(ca, key, chain)

    def replace(self, chain_pem: bytes, key_pem: bytes) -> None:
        """Adopt a renewed certificate: on disk (for the next start), then in memory."""
        with self._lock:
            trust = self._pem[2] if self._pem is not None else self.ca.read_bytes()
            cert_next = self.cert.with_name(self.cert.name + _NEXT)
            _write(cert_next, chain_pem, 0o644)
            _write(self.key, key_pem, 0o600)
            cert_next.replace(self.cert)
            self._pem = (chain_pem, key_pem, trust)
            self.generation += 1


def _write(path: Path, data: bytes, mode: int) -> None:
    """`path` replaced whole, created with its final mode (a key is never readable by
    others, not even briefly) and on disk before it takes the name."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def _finish_interrupted_swap(cert: Path, key: Path) -> None:
    """A renewal stopped between its two renames left the new key in place and the new
    chain as `cert.pem.next`: take that chain if it belongs to the key."""
    pending = cert.with_name(cert.name + _NEXT)
    if not pending.exists():
        return
    try:
        leaf = x509.load_pem_x509_certificate(pending.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), None)
        matches = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo) == \
            private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (OSError, ValueError):
        matches = False
    if matches:
        pending.replace(cert)
    else:
        pending.unlink(missing_ok=True)   # the key was not replaced: the old pair stands


def open_channel(address: str, tls: ControlTls | None) -> grpc.Channel:
    if tls is None or address.startswith("unix:"):
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.credentials(),
                               options=[("grpc.ssl_target_name_override", CONTROL_SERVER_NAME)])


Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateRenewer:
    """Renews the agent's certificate in `tls` before it expires, on its own thread."""

    def __init__(self, address: str, node: str, tls: ControlTls, clock: Clock = _utc_now) -> None:
        self.address = address
        self.node = node
        self.tls = tls
        self.clock = clock
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-cert-renewal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def renew(self) -> bytes:
        """One renewal; returns the new chain (raises grpc.RpcError, CredentialsError)."""
        pair = new_key_and_csr()
        with open_channel(self.address, self.tls) as channel:
            response = ca_pb2_grpc.CertificateServiceStub(channel).CreateCertificate(
                ca_pb2.CertificateRequest(csr=pair.csr_pem.decode(), node=self.node, node_agent=True), timeout=10)
        chain = "".join(response.cert_chain).encode()
        if not chain:
            raise CredentialsError("tulle-control answered the renewal with no certificate")
        self.tls.replace(chain, pair.key_pem)
        self.renewals += 1
        leaf = x509.load_pem_x509_certificate(chain)
        log.info("agent certificate of node %s renewed (serial %x, valid until %s)", self.node,
                 leaf.serial_number, leaf.not_valid_after_utc.isoformat())
        return chain

    def _run(self) -> None:
        try:
            chain = self.tls.pem()[0]
        except CredentialsError as e:
            log.error("%s: no renewal", e)
            return
        due = renewal_time(chain, self.clock())
        failures = 0
        while not self._stop.wait(max((due - self.clock()).total_seconds(), 0.0)):
            try:
                chain = self.renew()
                failures = 0
                due = renewal_time(chain, self.clock())
            except (grpc.RpcError, CredentialsError, ValueError) as e:
                failures += 1
                delay = retry_delay(failures)
                detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
                log.warning("renewing the agent certificate of node %s failed (%s); retrying in %.0fs",
                            self.node, detail, delay.total_seconds())
                due = self.clock() + delay
