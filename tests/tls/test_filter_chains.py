"""Listener filters and filter chain selection: tls_inspector's reading of a ClientHello,
Envoy's FilterChainMatch order, and a PERMISSIVE / STRICT inbound listener serving
mTLS and plaintext on one port."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest

from control.ca.authority import CertificateAuthority
from proxy.config_error import ConfigError
from proxy.filter_chain_match import ChainMatch, ConnectionFacts, select
from proxy.tls.client_hello import Inspection, inspect
from tests.ports import free_port
from tests.tls.sidecars import (
    CATALOG,
    FRONTEND,
    HCM,
    NOW,
    ROUTER,
    App,
    cluster,
    downstream_tls,
    endpoint,
    get,
    mtls_server_context,
    proxy,
    run,
    svid,
    trust,
)

TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}


def client_hello(server_name: str = "", alpn: tuple[str, ...] = ()) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name or None)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def facts(port: int = 8080, transport: str = "", server_name: str = "", ip: str = "10.0.0.1",
          alpn: tuple[str, ...] = ()) -> ConnectionFacts:
    return ConnectionFacts(ip, port, "10.0.0.9", 40000, transport, server_name, alpn)


# -- tls_inspector ---------------------------------------------------------------------------


def test_inspector_reads_sni_and_alpn_from_a_client_hello() -> None:
    hello = client_hello("outbound_.80_._.catalog.shop.svc.cluster.local", ("istio-peer-exchange", "h2"))
    assert inspect(hello) == Inspection("tls", "outbound_.80_._.catalog.shop.svc.cluster.local",
                                        ("istio-peer-exchange", "h2"))


def test_inspector_waits_for_the_whole_client_hello() -> None:
    hello = client_hello("a.example")
    assert inspect(hello[:3]) is None
    assert inspect(hello[:60]) is None


def test_inspector_calls_plaintext_raw_buffer() -> None:
    assert inspect(b"GET / HTTP/1.1\r\n") == Inspection("raw_buffer")


# -- filter chain match ----------------------------------------------------------------------


def test_a_port_specific_chain_beats_the_catch_all() -> None:
    chains = [ChainMatch(), ChainMatch(destination_port=8080)]
    assert select(chains, facts(8080)) == 1
    assert select(chains, facts(9090)) == 0


def test_transport_protocol_splits_a_permissive_port() -> None:
    chains = [ChainMatch(destination_port=8080, transport_protocol="tls"),
              ChainMatch(destination_port=8080, transport_protocol="raw_buffer")]
    assert select(chains, facts(8080, "tls")) == 0
    assert select(chains, facts(8080, "raw_buffer")) == 1


def test_a_strict_port_matches_no_plaintext_and_the_port_wins_over_transport() -> None:
    """Envoy narrows by port first: a plaintext connection to a STRICT port does not
    fall back to the catch-all plaintext chain."""
    chains = [ChainMatch(destination_port=8080, transport_protocol="tls"), ChainMatch(transport_protocol="raw_buffer")]
    assert select(chains, facts(8080, "raw_buffer")) is None
    assert select(chains, facts(9090, "raw_buffer")) == 1


def test_longest_destination_prefix_wins() -> None:
    chains = [ChainMatch(prefix_ranges=(ipaddress.ip_network("10.0.0.0/8"),)),
              ChainMatch(prefix_ranges=(ipaddress.ip_network("10.0.0.0/24"),))]
    assert select(chains, facts(ip="10.0.0.1")) == 1
    assert select(chains, facts(ip="10.1.0.1")) == 0
    assert select(chains, facts(ip="192.168.0.1")) is None


def test_an_exact_server_name_beats_a_wildcard() -> None:
    chains = [ChainMatch(server_names=("*.shop.svc",)), ChainMatch(server_names=("catalog.shop.svc",))]
    assert select(chains, facts(server_name="catalog.shop.svc")) == 1
    assert select(chains, facts(server_name="cart.shop.svc")) == 0


def test_application_protocols_match_any_offered() -> None:
    chains = [ChainMatch(application_protocols=("h2",)), ChainMatch()]
    assert select(chains, facts(alpn=("http/1.1", "h2"))) == 0
    assert select(chains, facts(alpn=("http/1.1",))) == 1


def test_two_chains_with_the_same_match_are_refused() -> None:
    chain = {"filter_chain_match": {"destination_port": 1},
             "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                 "stat_prefix": "t", "cluster": "app"}}]}
    listener = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [chain, chain]}
    with pytest.raises(ConfigError) as error:
        proxy([listener], [cluster("app", [endpoint(1)])])
    assert error.value.path == "static_resources.listeners[0].filter_chains[1].filter_chain_match"


# -- a PERMISSIVE / STRICT inbound port -------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


def inbound_listener(port: int, ca: CertificateAuthority, permissive: bool) -> dict[str, Any]:
    def chain(transport: str) -> dict[str, Any]:
        hcm = {"@type": HCM, "stat_prefix": f"inbound_{port}", "forward_client_cert_details": "SANITIZE_SET",
               "set_current_client_cert_details": {"uri": True},
               "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                   "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
        out: dict[str, Any] = {"name": f"inbound|{port}|{transport}",
                               "filter_chain_match": {"destination_port": port, "transport_protocol": transport},
                               "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}
        if transport == "tls":
            out["transport_socket"] = downstream_tls(mtls_server_context(ca, CATALOG))
        return out
    chains = [chain("tls")] + ([chain("raw_buffer")] if permissive else [])
    return {"name": "virtualInbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "listener_filters": [TLS_INSPECTOR], "filter_chains": chains}


async def mtls_get(port: int, ca: CertificateAuthority) -> tuple[int, bytes]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca.trust_bundle_pem().decode())
    from proxy.tls.context import load_certificate

    pem = svid(ca, FRONTEND)
    load_certificate(context, pem["certificate_chain"]["inline_string"].encode(),
                     pem["private_key"]["inline_string"].encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="")
    writer.write(b"GET /tls HTTP/1.1\r\nhost: catalog\r\nx-forwarded-client-cert: By=forged\r\nconnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def plaintext_answer(port: int) -> bytes:
    """What a plaintext request gets back (b"" when the connection is closed or reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def test_a_permissive_port_serves_mtls_and_plaintext(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        app = App()
        await app.start()
        port = free_port()
        sidecar = proxy([inbound_listener(port, ca, permissive=True)], [cluster("app", [endpoint(app.port)])])
        await sidecar.start()
        try:
            status, body = await mtls_get(port, ca)
            assert status == 200
            xfcc = next(line for line in body.split(b"\r\n") if line.startswith(b"x-forwarded-client-cert"))
            assert xfcc.startswith(b"x-forwarded-client-cert: By=spiffe://cluster.local/ns/shop/sa/catalog;Hash=")
            assert xfcc.endswith(b";URI=spiffe://cluster.local/ns/shop/sa/frontend")
            status, body = await get(port, "/plain", "x-forwarded-client-cert: By=forged\r\n")
            assert status == 200
            assert b"x-forwarded-client-cert" not in body     # sanitized, nothing to set
            assert len(app.requests) == 2
        finally:
            await sidecar.stop()
            app.close()
    run(scenario)


def test_a_strict_port_closes_plaintext_connections(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        app = App()
        await app.start()
        port = free_port()
        sidecar = proxy([inbound_listener(port, ca, permissive=False)], [cluster("app", [endpoint(app.port)])])
        await sidecar.start()
        try:
            for _ in range(20):
                assert await plaintext_answer(port) == b""
            assert app.requests == []
            assert f"listener.127.0.0.1_{port}.no_filter_chain_match: 20" in sidecar.stats.render_text()
            assert (await mtls_get(port, ca))[0] == 200
        finally:
            await sidecar.stop()
            app.close()
    run(scenario)


def test_a_client_certificate_is_required_by_a_strict_port(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        app = App()
        await app.start()
        port = free_port()
        sidecar = proxy([inbound_listener(port, ca, permissive=False)], [cluster("app", [endpoint(app.port)])])
        await sidecar.start()
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.load_verify_locations(cadata=trust(ca)["trusted_ca"]["inline_string"])
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, IndexError)):
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="")
                writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                data = await asyncio.wait_for(reader.read(), 5)
                int(data.split(b" ", 2)[1])
            assert app.requests == []
        finally:
            await sidecar.stop()
            app.close()
    run(scenario)
