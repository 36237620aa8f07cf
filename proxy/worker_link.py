"""The link between the leader worker and each follower under `--concurrency N`.

Theory of operation: the parent process makes one unix socketpair per follower before it
forks the workers. Worker 0, the leader, holds the only ADS stream: every xDS response it
has applied (validated whole, then swapped in) goes to every follower as the same
`(type_url, resources)`, and each follower applies it in arrival order on its own event
loop — so each worker's swap is atomic, and all workers converge on the leader's accepted
config (a response the leader NACKs never reaches them).

Secrets arrive once too: only the leader runs SDS streams (or the identity client under
`--identity-socket`, so there is one key and one CSR per proxy, not per worker). Its
SecretStore is a ForwardingSecretStore: every update — one whole SDS response, or one
renewal — goes to every follower as one frame, which the follower applies in one
`SecretStore.update`, so a rotation swaps atomically in every worker; a follower that links
up gets the whole store first. A follower's listeners and clusters wait for their secrets
on ForwardedSecrets, the follower's stand-in for an SDS client.

Host health is probed once too: only the leader runs active health checks. Each report of
its HealthCheckers (a host's health flipped or had its first result, a cluster's first
round completed, a cluster's membership changed or it was removed; see
proxy/upstream/health/report.py) goes to every follower as one frame, which the follower
applies in one step to the hosts with those addresses in the cluster of that name, or keeps
until they appear (proxy/upstream/health/replica.py). The leader links its followers before
it starts any cluster, so no report is missed; a follower's cluster warming waits for the
leader's first round (proxy/upstream/health/workers.py).

The other way, each follower sends a snapshot of its stats and of its per-host counters
every SNAPSHOT_INTERVAL seconds; the leader's admin /stats and /clusters add the latest
snapshot of every follower to its own values (proxy/stats.py, proxy/admin/endpoints.py; the
gauges every worker holds alike, membership_healthy and membership_total, stay the leader's), and
its health checkers count a cluster that a follower sent requests as having traffic.

Wire format (the sans-IO part, `encode_frame` and `FrameReader`): a frame is a kind byte,
a 4-byte big-endian length and the payload. Kinds: `x` an xDS update (a serialized
DiscoveryResponse carrying type_url and resources), `k` secrets (a serialized
DiscoveryResponse of Secret resources, PEM inline), `s` a stats snapshot (JSON list of
[name, kind, scope, tag, stat, value, is_gauge]), `h` a per-host snapshot (JSON list of
[cluster, host, {field: value}], admin/endpoints.py's HostRow), `a` a health report (JSON
[cluster, full, initialized, removed, [[address, port, failed], ...]], a
ClusterHealth), `f` the server's health-check state (admin /healthcheck/fail and /ok: `1`
failed, `0` ok), which the leader's admin sets and every follower applies (its DEFAULT listeners
drain while failed, as Envoy's drain manager does for every worker), `o` a follower's batch of
upstream outcomes for the leader's outlier detectors (JSON list of [cluster, address, port,
status, count], OutcomeRuns) and `e` the ejections of one cluster's outlier detector, which
every follower sets on its hosts (JSON [cluster, removed, [[address, port], ...]], an
EjectionReport; proxy/upstream/outlier_workers.py), and `d` a DNS resolution by the leader,
which every follower sets as the hosts of that cluster (JSON [cluster, removed, {endpoint
name: [address, ...]}], a Resolution; proxy/upstream/dns_workers.py). A follower sends `r` (empty) once it has started (its static
clusters warmed and its listeners bound): until every follower has, the leader's /ready says
INITIALIZING.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret as SecretProto
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.any_pb2 import Any

from proxy.admin.endpoints import HostRow
from proxy.stats import StatRow
from proxy.tls.secrets import SECRET, CertificateSecret, Secret, SecretStore, decode_secrets
from proxy.upstream.dns_workers import Resolution
from proxy.upstream.health.report import ClusterHealth, HostHealth
from proxy.upstream.outlier_workers import EjectionReport, OutcomeRun

log = logging.getLogger("tulle.proxy.workers")

XDS = b"x"
STATS = b"s"
SECRETS = b"k"
HOSTS = b"h"
HEALTH = b"a"
SERVER_HEALTH = b"f"
OUTCOMES = b"o"
EJECTIONS = b"e"
RESOLUTION = b"d"
STARTED = b"r"
SNAPSHOT_INTERVAL = 0.25
_HEADER = struct.Struct(">cI")


def encode_frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


class FrameReader:
    """Frames out of a byte stream, in order, however the stream was cut."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(buffer)
            end = _HEADER.size + length
            if len(buffer) < end:
                return
            payload = bytes(buffer[_HEADER.size:end])
            del buffer[:end]
            yield kind, payload


def encode_update(type_url: str, resources: Sequence[Any]) -> bytes:
    return encode_frame(XDS, DiscoveryResponse(type_url=type_url, resources=list(resources))
                        .SerializeToString())


def decode_update(payload: bytes) -> tuple[str, list[Any]]:
    message = DiscoveryResponse.FromString(payload)
    return message.type_url, list(message.resources)


def encode_stats(rows: Sequence[StatRow]) -> bytes:
    return encode_frame(STATS, json.dumps(rows).encode())


def decode_stats(payload: bytes) -> list[StatRow]:
    return [tuple(row) for row in json.loads(payload)]


def encode_secrets(secrets: Mapping[str, Secret]) -> bytes:
    resources = []
    for name, secret in secrets.items():
        message = SecretProto(name=name)
        if isinstance(secret, CertificateSecret):
            message.tls_certificate.certificate_chain.inline_bytes = secret.chain_pem
            message.tls_certificate.private_key.inline_bytes = secret.key_pem
        else:
            message.validation_context.trusted_ca.inline_bytes = secret.trusted_ca_pem
        packed = Any()
        packed.Pack(message)
        resources.append(packed)
    return encode_frame(SECRETS, DiscoveryResponse(type_url=SECRET, resources=resources).SerializeToString())


def decode_secrets_frame(payload: bytes) -> dict[str, Secret]:
    return decode_secrets(DiscoveryResponse.FromString(payload))


def encode_hosts(rows: Sequence[HostRow]) -> bytes:
    return encode_frame(HOSTS, json.dumps(rows).encode())


def decode_hosts(payload: bytes) -> list[HostRow]:
    return [(cluster, host, values) for cluster, host, values in json.loads(payload)]


def encode_health(report: ClusterHealth) -> bytes:
    hosts = [[host.address, host.port, host.failed] for host in report.hosts]
    return encode_frame(HEALTH, json.dumps([report.cluster, report.full, report.initialized, report.removed,
                                            hosts]).encode())


def decode_health(payload: bytes) -> ClusterHealth:
    cluster, full, initialized, removed, hosts = json.loads(payload)
    return ClusterHealth(cluster, tuple(HostHealth(address, port, failed) for address, port, failed in hosts),
                         full=full, initialized=initialized, removed=removed)


def encode_server_health(failed: bool) -> bytes:
    return encode_frame(SERVER_HEALTH, b"1" if failed else b"0")


def decode_server_health(payload: bytes) -> bool:
    return payload == b"1"


def encode_outcomes(runs: Sequence[OutcomeRun]) -> bytes:
    return encode_frame(OUTCOMES, json.dumps(runs).encode())


def decode_outcomes(payload: bytes) -> list[OutcomeRun]:
    return [OutcomeRun(*run) for run in json.loads(payload)]


def encode_ejections(report: EjectionReport) -> bytes:
    return encode_frame(EJECTIONS, json.dumps([report.cluster, report.removed, report.ejected]).encode())


def decode_ejections(payload: bytes) -> EjectionReport:
    cluster, removed, ejected = json.loads(payload)
    return EjectionReport(cluster, tuple((address, port) for address, port in ejected), removed=removed)


def encode_resolution(report: Resolution) -> bytes:
    return encode_frame(RESOLUTION, json.dumps([report.cluster, report.removed, report.resolved]).encode())


def decode_resolution(payload: bytes) -> Resolution:
    cluster, removed, resolved = json.loads(payload)
    return Resolution(cluster, resolved, removed=removed)


class LinkProtocol(asyncio.Protocol):
    """One end of a socketpair: frames in go to `on_frame`, `send` writes one."""

    def __init__(self, on_frame: Callable[[bytes, bytes], None]) -> None:
        self._on_frame = on_frame
        self._reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for kind, payload in self._reader.feed(data):
            self._on_frame(kind, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame)


async def open_link(sock: socket.socket, on_frame: Callable[[bytes, bytes], None]) -> LinkProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.connect_accepted_socket(lambda: LinkProtocol(on_frame), sock=sock)
    return protocol


class ForwardingSecretStore(SecretStore):
    """The leader's secrets: each update also goes, whole, to every linked follower."""

    def __init__(self) -> None:
        super().__init__()
        self._links: list[LinkProtocol] = []

    def link(self, link: LinkProtocol) -> None:
        """A follower joins: it gets every secret so far, then each update."""
        self._links.append(link)
        secrets = {name: secret for name in self.names() if (secret := self.get(name)) is not None}
        if secrets:
            link.send(encode_secrets(secrets))

    def update(self, secrets: Mapping[str, Secret]) -> None:
        super().update(secrets)
        if secrets and self._links:
            frame = encode_secrets(secrets)
            for link in self._links:
                link.send(frame)


class ForwardedSecrets:
    """A follower's source of secrets (what the leader's SDS delivered), with the surface
    the proxy uses of an SDS client: `subscribe` and `ready`."""

    def __init__(self, store: SecretStore) -> None:
        self.store = store
        self.names: tuple[str, ...] = ()
        self._received = asyncio.Event()

    def subscribe(self, names: Iterable[str]) -> None:
        self.names = tuple(sorted(set(self.names) | set(names)))

    def apply(self, payload: bytes) -> None:
        """One forwarded update, in one store update (the leader validated it)."""
        self.store.update(decode_secrets_frame(payload))
        self._received.set()

    async def ready(self, names: Iterable[str]) -> None:
        wanted = set(names)
        while any(self.store.get(name) is None for name in wanted):
            self._received.clear()
            await self._received.wait()
