"""--concurrency N with SDS: one secret stream for the whole proxy (the leader's), its secrets
and their rotation in every worker, and admin /clusters adding up every worker's per-host
counters."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf.any_pb2 import Any

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from proxy.tls.secrets import SECRET
from proxy.tls.workload_identity import new_key_and_csr
from tests.proxy.running import free_port
from tests.proxy.test_workers_xds import CountingUpstream, stat
from tests.proxy_process import ProxyProcess


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Serves one certificate secret, `server-cert`, to every stream; `rotate` pushes a new
    version to the streams open. Counts the streams it was opened."""

    def __init__(self, certificate: Secret) -> None:
        self.streams = 0
        self.requests: list[DiscoveryRequest] = []
        self._secret = certificate
        self._version = 1
        self._outboxes: list[queue.Queue[DiscoveryResponse]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _response(self) -> DiscoveryResponse:
        packed = Any()
        packed.Pack(self._secret)
        return DiscoveryResponse(version_info=str(self._version), type_url=SECRET, resources=[packed],
                                 nonce=str(self._version))

    def StreamSecrets(self, request_iterator: Iterator[DiscoveryRequest],
                      context: grpc.ServicerContext) -> Iterator[DiscoveryResponse]:
        self.streams += 1
        outbox: queue.Queue[DiscoveryResponse] = queue.Queue()
        self._outboxes.append(outbox)

        def read() -> None:
            try:
                for request in request_iterator:
                    self.requests.append(request)
                    if not request.response_nonce:   # a subscription: answer with the secret
                        outbox.put(self._response())
            except grpc.RpcError:
                pass

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                yield outbox.get(timeout=0.05)
            except queue.Empty:
                continue

    def rotate(self, certificate: Secret) -> None:
        self._secret = certificate
        self._version += 1
        for outbox in self._outboxes:
            outbox.put(self._response())

    def stop(self) -> None:
        self.server.stop(0)


def certificate(ca: CertificateAuthority, name: str) -> tuple[Secret, int]:
    """A `server-cert` Secret for a fresh key, and its certificate's serial number."""
    pair = new_key_and_csr()
    chain = ca.issue(pair.csr_pem, SpiffeId("cluster.local", "shop", name), dt.datetime.now(dt.UTC),
                     dt.timedelta(hours=1)).chain_pem()
    secret = Secret(name="server-cert")
    secret.tls_certificate.certificate_chain.inline_bytes = chain
    secret.tls_certificate.private_key.inline_bytes = pair.key_pem
    return secret, x509.load_pem_x509_certificate(chain).serial_number


def bootstrap(port: int, admin: int, upstream: int, sds: int) -> str:
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: server-cert
              sds_config:
                resource_api_version: V3
                api_config_source:
                  api_type: GRPC
                  transport_api_version: V3
                  grpc_services: [{{envoy_grpc: {{cluster_name: sds}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ['*']
              routes: [{{match: {{prefix: /}}, route: {{cluster: web}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: web
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
  - name: sds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {sds}}}}}}}}}]}}]
"""


def tls_get(port: int) -> tuple[int, bytes]:
    """One request on a fresh TLS connection: (the served certificate's serial, the response)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
            context.wrap_socket(raw, server_hostname="web") as sock:
        serial = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"").serial_number
        sock.sendall(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        return serial, response


def clusters_counter(admin: int, name: str) -> int:
    with socket.create_connection(("127.0.0.1", admin), timeout=3) as sock:
        sock.sendall(b"GET /clusters HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    return sum(int(value) for value in re.findall(rf"^web::[^:]+:\d+::{name}::(\d+)$", text.decode(), re.MULTILINE))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[SdsServer, CountingUpstream, CertificateAuthority, int, int]]:
    """tulle-proxy --concurrency 2 serving TLS with an SDS certificate: (sds, upstream, ca,
    listener port, admin port)."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", dt.datetime.now(dt.UTC))
    sds = SdsServer(certificate(ca, "first")[0])
    upstream = CountingUpstream()
    port, admin = free_port(), free_port()
    process = ProxyProcess("tulle-proxy", yaml.safe_load(bootstrap(port, admin, upstream.port, sds.port)), "tulle-workers-",
                           log_path=tmp_path / "proxy.log", concurrency=2)
    try:
        deadline = time.monotonic() + 15
        while True:   # the leader's listener is up once its admin is (it starts last)
            assert process.proc.poll() is None and time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
            with contextlib.suppress(OSError):
                if stat(admin, "http.ingress.downstream_rq_total") is not None:
                    break
            time.sleep(0.1)
        time.sleep(0.5)   # the follower's listener, once the leader forwarded the secret
        yield sds, upstream, ca, port, admin
    finally:
        process.close()
        upstream.close()
        sds.stop()


def test_workers_share_one_sds_stream(workers: tuple[SdsServer, CountingUpstream, CertificateAuthority, int, int]) -> None:
    sds, upstream, _, port, _ = workers
    responses = [tls_get(port)[1] for _ in range(20)]
    assert all(response.startswith(b"HTTP/1.1 200 ") for response in responses)
    assert upstream.connections >= 2   # both workers served TLS (each pools its own connection)
    assert sds.streams == 1


def test_a_rotated_secret_reaches_every_worker(workers: tuple[SdsServer, CountingUpstream, CertificateAuthority, int, int]) -> None:
    sds, upstream, ca, port, _ = workers
    rotated, serial = certificate(ca, "second")
    sds.rotate(rotated)
    deadline = time.monotonic() + 5
    while tls_get(port)[0] != serial and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)   # the follower applies the forwarded secret
    served = [tls_get(port) for _ in range(20)]
    assert {got for got, _ in served} == {serial}   # whichever worker took the connection
    assert upstream.connections >= 2
    assert sds.streams == 1


def test_clusters_counts_requests_of_every_worker(workers: tuple[SdsServer, CountingUpstream, CertificateAuthority, int, int]) -> None:
    _, upstream, _, port, admin = workers
    for _ in range(30):
        tls_get(port)
    assert upstream.connections >= 2   # both workers forwarded some of them
    deadline = time.monotonic() + 5
    while clusters_counter(admin, "rq_total") != 30 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clusters_counter(admin, "rq_total") == 30
    assert clusters_counter(admin, "rq_success") == 30
    assert clusters_counter(admin, "cx_total") == upstream.connections
