"""Access log fields and the stream idle timer against the real Envoy: %RESP(..)% sees the
headers the connection manager adds (server, date, the route's, connection: close);
%REQUESTED_SERVER_NAME% is the SNI a tls_inspector read, on HTTP and tcp_proxy listeners;
request body bytes restart the stream idle timer."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from control.ca.authority import CertificateAuthority
from tests.proxy.running import (
    RecordingUpstream,
    exchange,
    free_port,
    running_proxy,
    silent_upstream,
)
from tests.tls.sidecars import CATALOG, cluster, downstream_tls, endpoint, http_listener, svid

NOW = dt.datetime.now(dt.UTC)
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
HTTP_DATE = re.compile(r"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$")


def access_log(path: Path, line: str) -> list[dict[str, Any]]:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path), "log_format": {"text_format_source": {"inline_string": line}}}}]


def bootstrap(*listeners: dict[str, Any], clusters: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
                           "static_resources": {"listeners": list(listeners), "clusters": clusters}})


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_resp_sees_the_headers_the_connection_manager_adds(kind: str, tmp_path: Path) -> None:
    upstream = RecordingUpstream()   # answers without server or date
    port, log = free_port(), tmp_path / f"{kind}.log"
    listener = http_listener("main", port, "app", hcm_extra={
        "access_log": access_log(log, "%RESP(SERVER)%|%RESP(X-ADDED)%|%RESP(DATE)%|%RESP(CONNECTION)%|"
                                      "%RESP(CONTENT-LENGTH)%|%RESP(TRANSFER-ENCODING)%\n")})
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0][
        "response_headers_to_add"] = [{"header": {"key": "x-added", "value": "yes"}}]
    try:
        with running_proxy(kind, bootstrap(listener, clusters=[cluster("app", [endpoint(upstream.port)])]),
                           port, tmp_path):
            # the second goes over the upstream connection the first left idle
            replies = [exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                       for _ in range(2)]
    finally:
        upstream.close()
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    lines = log_lines(log)
    assert len(lines) == 2
    for line in lines:
        server, added, date, connection, length, encoding = line.split("|")
        assert (server, added, connection, length, encoding) == ("envoy", "yes", "close", "2", "-")
        assert HTTP_DATE.match(date), date


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


def _tls_get(port: int, server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_requested_server_name_is_the_sni_of_a_tls_connection(
        kind: str, ca: CertificateAuthority, tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    port, log = free_port(), tmp_path / f"{kind}.log"
    listener = http_listener("main", port, "app", transport=downstream_tls(
        {"common_tls_context": {"tls_certificates": [svid(ca, CATALOG)]}}),
        hcm_extra={"access_log": access_log(log, "%REQUESTED_SERVER_NAME%\n")})
    listener["listener_filters"] = [TLS_INSPECTOR]
    try:
        with running_proxy(kind, bootstrap(listener, clusters=[cluster("app", [endpoint(upstream.port)])]),
                           port, tmp_path):
            replies = [_tls_get(port, "catalog.shop.example"), _tls_get(port, None)]
    finally:
        upstream.close()
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    assert log_lines(log) == ["catalog.shop.example", "-"]


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_requested_server_name_on_tcp_proxy_is_the_client_hellos(kind: str, tmp_path: Path) -> None:
    """A TLS passthrough: tcp_proxy relays the ClientHello to an upstream that does not speak
    TLS; the SNI the tls_inspector read is logged when the connection closes."""
    upstream = RecordingUpstream()
    port, log = free_port(), tmp_path / f"{kind}.log"
    listener = {"name": "passthrough", "listener_filters": [TLS_INSPECTOR],
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": TCP_PROXY, "stat_prefix": "passthrough", "cluster": "app",
                    "access_log": access_log(log, "%REQUESTED_SERVER_NAME%\n")}}]}]}
    try:
        with running_proxy(kind, bootstrap(listener, clusters=[cluster("app", [endpoint(upstream.port)])]),
                           port, tmp_path):
            with pytest.raises((ssl.SSLError, OSError)):
                _tls_get(port, "db.shop.example")
            time.sleep(0.2)   # the pair closes
    finally:
        upstream.close()
    assert log_lines(log) == ["db.shop.example"]


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_request_body_bytes_restart_the_stream_idle_timer(kind: str, tmp_path: Path) -> None:
    """A body sent in chunks 0.25 s apart, under a 0.6 s stream idle timeout, to an upstream
    that never answers: the timeout fires 0.6 s after the last chunk (504), not 0.6 s after
    the request began (408)."""
    port = free_port()
    with silent_upstream() as silent:
        listener = http_listener("main", port, "app", hcm_extra={"stream_idle_timeout": "0.6s"})
        with running_proxy(kind, bootstrap(listener, clusters=[cluster("app", [endpoint(silent)])]),
                           port, tmp_path), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")
            for byte in b"hello":
                time.sleep(0.25)
                sock.sendall(bytes([byte]))
            last_chunk = time.monotonic()
            reply = sock.recv(65536)
            answered = time.monotonic()
    assert reply.startswith(b"HTTP/1.1 504 "), reply
    assert reply.endswith(b"stream timeout")
    assert last_chunk - start > 1.2
    assert 0.45 < answered - last_chunk < 0.9, json.dumps([start, last_chunk, answered])
