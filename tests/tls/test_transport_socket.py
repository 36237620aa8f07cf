"""tulle-proxy's TLS transport sockets: Envoy's UpstreamTlsContext on clusters and
DownstreamTlsContext on listener filter chains, between two in-process sidecars."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from google.protobuf import json_format

from control.ca.authority import CertificateAuthority
from proxy.config_error import ConfigError
from proxy.tls import openssl_direct, session_resumption
from proxy.tls.secrets import SecretStore
from proxy.tls.transport_socket import TlsConfig, TlsStats, TlsTransport
from tests.ports import free_port
from tests.tls.sidecars import (
    CATALOG,
    FRONTEND,
    NOW,
    App,
    cluster,
    downstream_tls,
    endpoint,
    get,
    http_listener,
    mtls_client_context,
    mtls_server_context,
    proxy,
    run,
    svid,
    trust,
    upstream_tls,
)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


async def sidecar_pair(ca: CertificateAuthority, client_context: dict[str, Any],
                       server_context: dict[str, Any] | None = None) -> tuple[App, Any, Any, int, int]:
    """(app, client sidecar, server sidecar, client port, server port), all started."""
    app = App()
    await app.start()
    server_port, client_port = free_port(), free_port()
    server = proxy([http_listener("inbound", server_port, "app",
                                  downstream_tls(server_context or mtls_server_context(ca, CATALOG)))],
                   [cluster("app", [endpoint(app.port)])])
    client = proxy([http_listener("outbound", client_port, "server")],
                   [cluster("server", [endpoint(server_port)], transport_socket=upstream_tls(client_context))])
    await server.start()
    await client.start()
    return app, client, server, client_port, server_port


async def stop(app: App, *proxies: Any) -> None:
    for running in proxies:
        await running.stop()
    app.close()


def test_requests_cross_two_sidecars_over_mutual_tls(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        app, client, server, client_port, _ = await sidecar_pair(
            ca, mtls_client_context(ca, FRONTEND, str(CATALOG)))
        try:
            for _ in range(3):
                status, body = await get(client_port, "/items")
                assert status == 200
                assert body.startswith(b"host: catalog")
            assert len(app.requests) == 3
            assert client.clusters["server"].tls_stats.handshake >= 1
        finally:
            await stop(app, client, server)
    run(scenario)


def test_server_sidecar_refuses_plaintext(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        app, client, server, _, server_port = await sidecar_pair(
            ca, mtls_client_context(ca, FRONTEND, str(CATALOG)))
        try:
            with pytest.raises((ConnectionError, ValueError, IndexError, asyncio.IncompleteReadError)):
                await get(server_port, "/")
            assert app.requests == []
        finally:
            await stop(app, client, server)
    run(scenario)


def test_wrong_san_is_a_503_counted_as_fail_verify_san(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        app, client, server, client_port, _ = await sidecar_pair(
            ca, mtls_client_context(ca, FRONTEND, "spiffe://cluster.local/ns/shop/sa/payments"))
        try:
            status, body = await get(client_port, "/")
            assert status == 503
            assert body.startswith(b"upstream connect error")
            assert client.clusters["server"].tls_stats.fail_verify_san == 1
            assert app.requests == []
        finally:
            await stop(app, client, server)
    run(scenario)


def test_client_without_certificate_is_refused_when_one_is_required(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        app, client, server, client_port, _ = await sidecar_pair(
            ca, {"common_tls_context": {"validation_context": trust(ca)}})
        try:
            status, _ = await get(client_port, "/")
            assert status == 503
            assert app.requests == []
        finally:
            await stop(app, client, server)
    run(scenario)


def test_certificate_from_another_ca_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    foreign = CertificateAuthority.load_or_create(tmp_path / "foreign", "cluster.local", NOW)

    async def scenario() -> None:
        client_context = mtls_client_context(ca, FRONTEND, str(CATALOG))
        client_context["common_tls_context"]["tls_certificates"] = [svid(foreign, FRONTEND)]
        app, client, server, client_port, _ = await sidecar_pair(ca, client_context)
        try:
            status, _ = await get(client_port, "/")
            assert status == 503
            assert app.requests == []
        finally:
            await stop(app, client, server)
    run(scenario)


def test_transport_socket_matches_choose_tls_by_endpoint_metadata(ca: CertificateAuthority) -> None:
    """Istio's auto mTLS: endpoints labelled tlsMode=istio get TLS, the others plaintext."""
    async def scenario() -> None:
        app, client, server, _, server_port = await sidecar_pair(
            ca, mtls_client_context(ca, FRONTEND, str(CATALOG)))
        plain_app = App()
        await plain_app.start()
        port = free_port()
        matches = [{"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                    "transport_socket": upstream_tls(mtls_client_context(ca, FRONTEND, str(CATALOG)))},
                   {"name": "tlsMode-disabled", "match": {},
                    "transport_socket": {"name": "envoy.transport_sockets.raw_buffer"}}]
        auto = proxy([http_listener("meshed", port, "meshed")],
                     [cluster("meshed", [endpoint(server_port, "istio"), endpoint(plain_app.port)],
                              transport_socket_matches=matches)])
        await auto.start()
        try:
            statuses = [(await get(port, "/"))[0] for _ in range(4)]
            assert statuses == [200] * 4
            assert len(app.requests) == 2 and len(plain_app.requests) == 2
            assert auto.clusters["meshed"].tls_stats.handshake == 1  # the TLS connection is pooled
        finally:
            await auto.stop()
            plain_app.close()
            await stop(app, client, server)
    run(scenario)


def test_alpn_and_tls13_are_negotiated(ca: CertificateAuthority) -> None:
    upstream = mtls_client_context(ca, FRONTEND, str(CATALOG))
    upstream["common_tls_context"]["tls_params"] = {"tls_maximum_protocol_version": "TLSv1_3"}

    async def scenario() -> None:
        app, client, server, _, server_port = await sidecar_pair(ca, upstream)
        try:
            pool = client.clusters["server"]
            context = pool.transport_socket(pool.host_set.hosts[0]).context()
            _, writer = await asyncio.open_connection("127.0.0.1", server_port, ssl=context, server_hostname="")
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == "http/1.1"
            assert ssl_object.version() == "TLSv1.3"
            writer.close()
        finally:
            await stop(app, client, server)
    run(scenario)


def test_without_tls_params_clients_stop_at_tls12_and_servers_at_tls13_as_envoys_do() -> None:
    assert TlsConfig.upstream_from_proto(UpstreamTlsContext(), "u").maximum == ssl.TLSVersion.TLSv1_2
    server = DownstreamTlsContext()
    server.common_tls_context.tls_certificates.add().certificate_chain.inline_string = "chain"
    server.common_tls_context.tls_certificates[0].private_key.inline_string = "key"
    assert TlsConfig.downstream_from_proto(server, "d").maximum == ssl.TLSVersion.TLSv1_3


def test_tls_versions_below_12_are_refused_with_their_path(ca: CertificateAuthority) -> None:
    context = mtls_client_context(ca, FRONTEND, str(CATALOG))
    context["common_tls_context"]["tls_params"] = {"tls_minimum_protocol_version": "TLSv1_1"}
    with pytest.raises(ConfigError) as error:
        proxy([], [cluster("server", [endpoint(1)], transport_socket=upstream_tls(context))])
    assert error.value.path == ("static_resources.clusters[0].transport_socket.typed_config."
                                "common_tls_context.tls_params.tls_minimum_protocol_version")


def test_unsupported_tls_fields_are_refused_with_their_path(ca: CertificateAuthority) -> None:
    context = mtls_server_context(ca, CATALOG)
    context["common_tls_context"]["tls_params"] = {"cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256"]}
    with pytest.raises(ConfigError) as error:
        proxy([http_listener("inbound", 1, "app", downstream_tls(context))], [cluster("app", [endpoint(1)])])
    assert error.value.path.endswith("filter_chains[0].transport_socket.typed_config."
                                     "common_tls_context.tls_params.cipher_suites")


@pytest.mark.parametrize("sessions", ["openssl", "python"])
@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_new_upstream_connections_resume_a_tls_session(ca: CertificateAuthority, version: str, sessions: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS 1.2 offers the session id again; TLS 1.3 offers each (single-use) ticket once,
    the newest one a connection was issued. Each connection is aborted after its request
    (max_requests_per_connection 1): the pooled session survives that. Sessions are held
    by OpenSSL, or copied by Python's ssl where OpenSSL's cannot be reached."""
    if sessions == "python":
        monkeypatch.setattr(openssl_direct, "available", lambda: False)
    upstream = mtls_client_context(ca, FRONTEND, str(CATALOG))
    upstream["common_tls_context"]["tls_params"] = {"tls_maximum_protocol_version": version}

    async def scenario() -> None:
        app = App()
        await app.start()
        server_port, client_port = free_port(), free_port()
        xfcc = {"forward_client_cert_details": "SANITIZE_SET", "set_current_client_cert_details": {"uri": True}}
        server = proxy([http_listener("inbound", server_port, "app",
                                      downstream_tls(mtls_server_context(ca, CATALOG)), xfcc)],
                       [cluster("app", [endpoint(app.port)])])
        client = proxy([http_listener("outbound", client_port, "server")],
                       [cluster("server", [endpoint(server_port)], max_requests_per_connection=1,
                                transport_socket=upstream_tls(upstream))])
        await server.start()
        await client.start()
        try:
            for _ in range(3):   # one connection each; the SAN check holds on resumed ones
                status, _ = await get(client_port, "/items")
                assert status == 200
            stats = client.clusters["server"].tls_stats
            assert stats.handshake == 3
            assert stats.session_reused == 2
            # the server still knows who the client is on a resumed session
            assert all(f"URI={FRONTEND}".encode() in head for head in app.requests)
        finally:
            await stop(app, client, server)
    run(scenario)


def handshake_in_memory(server: ssl.SSLContext, client: ssl.SSLContext, close_notify: bool = True) -> bool:
    """A handshake and a close (with close_notify both ways, or none) over memory BIOs; the
    client keeps the session for its next one. Whether this one was resumed."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    client_end = client.wrap_bio(to_client, to_server)
    closing = (client_end.unwrap, server_end.unwrap) if close_notify else (lambda: client_end.read(1),)
    for step in (client_end.do_handshake, server_end.do_handshake) * 3 + closing:
        with contextlib.suppress(ssl.SSLWantReadError):
            step()
    session_resumption.remember(client_end)
    return client_end.session_reused


def test_openssl_sessions_are_reachable_from_this_python() -> None:
    """The fast path (no copies of sessions, a bounded server cache) is what runs here."""
    assert openssl_direct.available()


def listener_and_client(ca: CertificateAuthority, version: str = "") -> tuple[TlsTransport, ssl.SSLContext]:
    transport = TlsTransport(TlsConfig.downstream_from_proto(
        json_format.ParseDict(mtls_server_context(ca, CATALOG), DownstreamTlsContext()), "d"),
        SecretStore(), TlsStats())
    upstream = mtls_client_context(ca, FRONTEND, str(CATALOG))
    if version:
        upstream["common_tls_context"]["tls_params"] = {"tls_maximum_protocol_version": version}
    client = TlsTransport(TlsConfig.upstream_from_proto(json_format.ParseDict(upstream, UpstreamTlsContext()), "u"),
                          SecretStore(), TlsStats()).context()
    return transport, client


def test_a_listeners_full_session_cache_evicts_its_oldest_sessions_and_keeps_resuming(
        ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS 1.3: every handshake, resumed or not, adds the session of its new ticket."""
    monkeypatch.setattr(session_resumption, "SERVER_CACHE", 2)
    transport, client = listener_and_client(ca, "TLSv1_3")
    bound = transport.server_context()
    resumed = [handshake_in_memory(bound, client) for _ in range(5)]
    assert transport.server_context() is bound
    stats = bound.session_stats()
    assert stats["number"] <= 2 and stats["cache_full"] > 0
    assert resumed == [False, True, True, True, True]   # the newest session is never the one evicted


def test_tls13_prefers_aes128_gcm_as_boringssl_does(ca: CertificateAuthority) -> None:
    transport, client = listener_and_client(ca, "TLSv1_3")
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = transport.server_context().wrap_bio(to_server, to_client, server_side=True)
    client_end = client.wrap_bio(to_client, to_server)
    for step in (client_end.do_handshake, server_end.do_handshake) * 3:
        with contextlib.suppress(ssl.SSLWantReadError):
            step()
    assert client_end.cipher() == ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)


def test_a_session_stays_resumable_when_its_connection_ends_without_close_notify(ca: CertificateAuthority) -> None:
    """As an upstream connection aborted after max_requests_per_connection ends."""
    transport, client = listener_and_client(ca, "TLSv1_3")
    resumed = [handshake_in_memory(transport.server_context(), client, close_notify=False) for _ in range(3)]
    assert resumed == [False, True, True]


def test_a_listeners_session_cache_is_replaced_by_an_empty_one_once_full_where_openssl_cannot_bound_it(
        ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_resumption, "SERVER_CACHE", 2)
    monkeypatch.setattr(openssl_direct, "bound_cache", lambda context, size: False)
    transport, client = listener_and_client(ca, "TLSv1_3")
    bound = transport.server_context()   # what a listener was bound with
    handshake_in_memory(bound, client)
    assert transport.server_context() is bound
    handshake_in_memory(bound, client)
    assert bound.session_stats()["number"] == 2
    fresh = transport.server_context()
    assert fresh is not bound and fresh.session_stats()["number"] == 0
    handshake_in_memory(bound, client)   # the bound context hands new connections the fresh one
    assert (bound.session_stats()["number"], fresh.session_stats()["number"]) == (2, 1)


def connected_in_memory(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject,
                                                                                   ssl.MemoryBIO, ssl.MemoryBIO]:
    """(server end, client end, to server, to client) after a handshake over memory BIOs."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    client_end = client.wrap_bio(to_client, to_server)
    for step in (client_end.do_handshake, server_end.do_handshake) * 3:
        with contextlib.suppress(ssl.SSLWantReadError):
            step()
    return server_end, client_end, to_server, to_client


def test_every_connection_reads_and_writes_records_through_the_native_ssl_methods(ca: CertificateAuthority) -> None:
    """The transport's per-record calls skip ssl.SSLObject's Python wrappers (proxy/tls/ssl_object.py)."""
    transport, client = listener_and_client(ca)
    server_end, client_end, _, _ = connected_in_memory(transport.server_context(), client)
    for end in (server_end, client_end):
        native = end._sslobj   # type: ignore[attr-defined]
        assert (end.read, end.write, end.pending, end.do_handshake) == (
            native.read, native.write, native.pending, native.do_handshake)
    client_end.write(b"GET / HTTP/1.1\r\n\r\n")
    assert server_end.pending() == 0
    assert server_end.read(1024) == b"GET / HTTP/1.1\r\n\r\n"
    with pytest.raises(ssl.SSLWantReadError):
        server_end.read(1024)


def test_the_peer_certificate_reads_as_pythons_own_and_is_decoded_once_per_certificate(
        ca: CertificateAuthority) -> None:
    transport, client = listener_and_client(ca)
    first = connected_in_memory(transport.server_context(), client)
    second = connected_in_memory(transport.server_context(), client)
    for server_end, client_end, _, _ in (first, second):
        for end in (server_end, client_end):
            assert end.getpeercert() == ssl.SSLObject.getpeercert(end)
            assert end.getpeercert(binary_form=True) == ssl.SSLObject.getpeercert(end, True)
    decoded = first[1].getpeercert()
    assert decoded is not None and ("URI", str(CATALOG)) in decoded["subjectAltName"]
    assert first[1].getpeercert() is not second[1].getpeercert()   # each caller gets its own dict


def test_the_peer_certificate_is_none_without_one_and_empty_when_peers_are_not_verified(
        ca: CertificateAuthority) -> None:
    optional = mtls_server_context(ca, CATALOG)
    optional["require_client_certificate"] = False
    transport = TlsTransport(TlsConfig.downstream_from_proto(json_format.ParseDict(optional, DownstreamTlsContext()),
                                                             "d"), SecretStore(), TlsStats())
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
    anonymous.sslobject_class = session_resumption.ResumingSSLObject
    server_end, client_end, _, _ = connected_in_memory(transport.server_context(), anonymous)
    assert server_end.getpeercert() is None
    assert client_end.getpeercert() == {}
    assert client_end.getpeercert(binary_form=True)
