"""Two tulle-proxy sidecars in-process, joined by mTLS, for the transport socket tests.

The client sidecar listens plaintext and sends to cluster `server` over an
UpstreamTlsContext; the server sidecar's listener has a DownstreamTlsContext and sends
to cluster `app` (a tiny HTTP app answering with its path). Certificates come from a
tulle-control CA made for the test; contexts are plain dicts turned into bootstrap YAML.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import yaml

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from proxy.bootstrap.config import parse_bootstrap
from proxy.server import ProxyServer
from proxy.tls.workload_identity import new_key_and_csr

NOW = dt.datetime.now(dt.UTC)
FRONTEND = SpiffeId("cluster.local", "shop", "frontend")
CATALOG = SpiffeId("cluster.local", "shop", "catalog")
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def svid(ca: CertificateAuthority, identity: SpiffeId, ttl: dt.timedelta = dt.timedelta(hours=1)) -> dict[str, Any]:
    """A TlsCertificate message (inline PEM) for `identity`."""
    pair = new_key_and_csr()
    chain = ca.issue(pair.csr_pem, identity, NOW, ttl).chain_pem()
    return {"certificate_chain": {"inline_string": chain.decode()},
            "private_key": {"inline_string": pair.key_pem.decode()}}


def trust(ca: CertificateAuthority) -> dict[str, Any]:
    return {"trusted_ca": {"inline_string": ca.trust_bundle_pem().decode()}}


def endpoint(port: int, tls_mode: str = "") -> dict[str, Any]:
    lb: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    if tls_mode:
        lb["metadata"] = {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": tls_mode}}}
    return lb


def http_listener(name: str, port: int, cluster: str, transport: dict[str, Any] | None = None,
                  hcm_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": name,
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                               "routes": [{"match": {"prefix": "/"},
                                                           "route": {"cluster": cluster}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    hcm.update(hcm_extra or {})
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typed_config": hcm}]}
    if transport is not None:
        chain["transport_socket"] = transport
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain]}


def cluster(name: str, endpoints: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}, **extra}


def upstream_tls(context: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": UPSTREAM_TLS, **context}}


def downstream_tls(context: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": DOWNSTREAM_TLS, **context}}


def mtls_server_context(ca: CertificateAuthority, identity: SpiffeId) -> dict[str, Any]:
    return {"require_client_certificate": True,
            "common_tls_context": {"tls_certificates": [svid(ca, identity)], "validation_context": trust(ca),
                                   "alpn_protocols": ["http/1.1"]}}


def mtls_client_context(ca: CertificateAuthority, identity: SpiffeId, expect: str) -> dict[str, Any]:
    return {"common_tls_context": {
        "tls_certificates": [svid(ca, identity)],
        "validation_context": {**trust(ca), "match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": expect}}]},
        "alpn_protocols": ["http/1.1"]}}


def proxy(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> ProxyServer:
    text = yaml.safe_dump({"static_resources": {"listeners": listeners, "clusters": clusters}})
    return ProxyServer(parse_bootstrap(text), admin=False)


class App:
    """An HTTP/1.1 app on loopback answering 200 with the request's path and headers."""

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[bytes] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                body = head.split(b"\r\n", 1)[1]
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def close(self) -> None:
        assert self._server is not None
        self._server.close()


async def get(port: int, path: str = "/", headers: str = "") -> tuple[int, bytes]:
    """One request on a new connection: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: catalog\r\n{headers}connection: close\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))
