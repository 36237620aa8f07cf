"""How an upstream TLS connection ends, against the real Envoy: one the proxy closes when it
is done with it (here after max_requests_per_connection) says close_notify first, so the
upstream sees a clean TLS close rather than a truncated stream."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
import yaml

from control.ca.authority import CertificateAuthority
from proxy.tls.workload_identity import new_key_and_csr
from tests.proxy.running import ThreadedUpstream, exchange, free_port, running_proxy
from tests.tls.sidecars import CATALOG, cluster, endpoint, http_listener, upstream_tls

NOW = dt.datetime.now(dt.UTC)


class TlsUpstream(ThreadedUpstream):
    """An HTTPS upstream answering each connection's first request, then noting how the
    proxy ended the connection: "close_notify" or "truncated"."""

    timeout = 3.0

    def __init__(self, ca: CertificateAuthority, tmp_path: Path) -> None:
        pair = new_key_and_csr()
        (tmp_path / "upstream.pem").write_bytes(ca.issue(pair.csr_pem, CATALOG, NOW, dt.timedelta(hours=1)).chain_pem())
        (tmp_path / "upstream.key").write_bytes(pair.key_pem)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(tmp_path / "upstream.pem", tmp_path / "upstream.key")
        self.endings: list[str] = []
        self.done = threading.Event()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        try:
            with self.context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                try:
                    self.endings.append("close_notify" if tls.recv(65536) == b"" else "more data")
                except ssl.SSLEOFError:
                    self.endings.append("truncated")
        except OSError as error:
            self.endings.append(f"error: {error}")
        finally:
            self.done.set()


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_an_upstream_tls_connection_the_proxy_is_done_with_ends_with_close_notify(kind: str, tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)
    upstream = TlsUpstream(ca, tmp_path)
    port = free_port()
    tls_cluster = cluster("app", [endpoint(upstream.port)], max_requests_per_connection=1,
                          transport_socket=upstream_tls({"sni": "catalog.shop"}))
    config = yaml.safe_dump({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {"listeners": [http_listener("main", port, "app")], "clusters": [tls_cluster]}})
    try:
        with running_proxy(kind, config, port, tmp_path):
            reply = exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert upstream.done.wait(5)
    finally:
        upstream.close()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert upstream.endings == ["close_notify"]
