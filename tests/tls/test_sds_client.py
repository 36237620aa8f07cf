"""tulle-proxy's SDS client against the node agent's real SDS server (per-pod unix
sockets, certificates from tulle-control's CA): secrets named `default` and `ROOTCA`
over a `pipe` cluster, as tulle-control's sidecar config names them; rotation reaches
new connections while connections in flight keep their certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cryptography import x509

from control.ca.component import CaConfig, CaService
from control.plane import ControlPlane, ControlPlaneConfig
from netpolicy.agent.identity import CertificateAuthorityClient, PodRef
from netpolicy.agent.sds import PodSdsServer, WorkloadSecrets, pod_socket
from proxy.tls.context import peer_spiffe_ids
from proxy.tls.secrets import CertificateSecret
from proxy.tls.transport_socket import TlsConfig, TlsStats, TlsTransport
from tests.ports import free_port
from tests.tls.sidecars import (
    App,
    cluster,
    downstream_tls,
    endpoint,
    get,
    http_listener,
    proxy,
    upstream_tls,
)

FRONTEND_POD = PodRef("shop", "frontend-1")
CATALOG_POD = PodRef("shop", "catalog-1")
CATALOG_ID = "spiffe://cluster.local/ns/shop/sa/catalog"
FRONTEND_ID = "spiffe://cluster.local/ns/shop/sa/frontend"


def sds(name: str) -> dict[str, Any]:
    """An SdsSecretConfig exactly as tulle-control emits it (reports/mtls.md)."""
    return {"name": name, "sds_config": {
        "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                              "set_node_on_first_message_only": True,
                              "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
        "resource_api_version": "V3", "initial_fetch_timeout": "0s"}}


def common() -> dict[str, Any]:
    return {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": ["h2", "http/1.1"], "tls_certificate_sds_secret_configs": [sds("default")]}


def server_tls() -> dict[str, Any]:
    return downstream_tls({"require_client_certificate": True, "common_tls_context": {
        **common(), "combined_validation_context": {"default_validation_context": {},
                                                    "validation_context_sds_secret_config": sds("ROOTCA")}}})


def client_tls(expect: str) -> dict[str, Any]:
    return upstream_tls({"sni": "outbound_.80_._.catalog.shop.svc.cluster.local", "common_tls_context": {
        **common(), "alpn_protocols": ["http/1.1"], "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": expect}}]},
            "validation_context_sds_secret_config": sds("ROOTCA")}}})


def sds_cluster(socket: Path) -> dict[str, Any]:
    return {"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s", "http2_protocol_options": {},
            "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": str(socket)}}}}]}]}}


@asynccontextmanager
async def mesh(tmp_path: Path, ttl: int = 0) -> AsyncIterator[tuple[App, Any, Any, int, int]]:
    """tulle-control's CA, the agent's SDS sockets for two pods, and their two sidecars:
    (app, client sidecar, server sidecar, client port, server port)."""
    plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "run" / "control.sock", listen=()),
                         [CaService(CaConfig(svid_ttl=dt.timedelta(hours=1)))])
    await plane.start()
    ca = CertificateAuthorityClient("node-1", f"unix:{tmp_path}/run/control.sock")
    await plane.registry.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])
    servers = []
    for pod, account in ((FRONTEND_POD, "frontend"), (CATALOG_POD, "catalog")):
        await plane.registry.apply([{"apiVersion": "v1", "kind": "Pod",
                                     "metadata": {"name": pod.name, "namespace": pod.namespace},
                                     "spec": {"nodeName": "node-1", "serviceAccountName": account,
                                              "containers": [{"name": "app", "image": "app"}]}}])
        server = PodSdsServer(pod_socket(tmp_path / "sds", pod), WorkloadSecrets(pod, ca, ttl))
        await server.start()
        servers.append(server)
    app = App()
    await app.start()
    server_port, client_port = free_port(), free_port()
    try:
        inbound = proxy([http_listener("inbound", server_port, "app", server_tls())],
                        [cluster("app", [endpoint(app.port)]), sds_cluster(servers[1].path)])
        outbound = proxy([http_listener("outbound", client_port, "catalog")],
                         [cluster("catalog", [endpoint(server_port)], transport_socket=client_tls(CATALOG_ID)),
                          sds_cluster(servers[0].path)])
        await inbound.start()
        await outbound.start()
        yield app, outbound, inbound, client_port, server_port
    finally:
        for running in (locals().get("outbound"), locals().get("inbound")):
            if running is not None:
                await running.stop()
        app.close()
        for server in servers:
            await server.stop()
        await ca.close()
        await plane.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 40))


def leaf_serial(secret: object) -> int:
    assert isinstance(secret, CertificateSecret)
    return x509.load_pem_x509_certificate(secret.chain_pem).serial_number


def test_sidecars_get_their_certificates_from_the_agents_sds_and_talk_mtls(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (app, outbound, _inbound, client_port, _):
            status, _ = await get(client_port, "/items")
            assert status == 200
            assert len(app.requests) == 1
            assert outbound.sds["sds-grpc"].names == ("ROOTCA", "default")
            certificate = outbound.secrets.get("default")
            assert isinstance(certificate, CertificateSecret)
            san = x509.load_pem_x509_certificate(certificate.chain_pem).extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.UniformResourceIdentifier) == [FRONTEND_ID]
    run(scenario)


def test_each_side_sees_the_others_spiffe_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (_, outbound, _inbound, _, server_port):
            host = outbound.clusters["catalog"].host_set.hosts[0]
            transport = outbound.clusters["catalog"].transport_socket(host)
            _, writer = await asyncio.open_connection("127.0.0.1", server_port, ssl=transport.context(),
                                                      server_hostname="")
            assert peer_spiffe_ids(writer.get_extra_info("ssl_object")) == (CATALOG_ID,)
            writer.close()
    run(scenario)


def test_rotation_reaches_new_connections_and_spares_those_in_flight(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path, ttl=4) as (_app, outbound, inbound, client_port, server_port):
            host = outbound.clusters["catalog"].host_set.hosts[0]
            client = outbound.clusters["catalog"].transport_socket(host)
            first_serial = leaf_serial(inbound.secrets.get("default"))
            reader, writer = await asyncio.open_connection("127.0.0.1", server_port, ssl=client.context(),
                                                           server_hostname="")
            before = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            version = inbound.secrets.version
            for _ in range(100):
                if inbound.secrets.version > version:
                    break
                await asyncio.sleep(0.1)
            assert leaf_serial(inbound.secrets.get("default")) != first_serial
            # the connection made before the rotation still serves, on its old certificate
            writer.write(b"GET /old HTTP/1.1\r\nhost: catalog\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
            writer.close()
            # a new connection gets the new certificate
            _, fresh = await asyncio.open_connection("127.0.0.1", server_port, ssl=client.context(),
                                                     server_hostname="")
            after = fresh.get_extra_info("ssl_object").getpeercert(binary_form=True)
            fresh.close()
            assert x509.load_der_x509_certificate(after).serial_number == leaf_serial(inbound.secrets.get("default"))
            assert after != before
            assert (await get(client_port, "/"))[0] == 200
    run(scenario)


def test_a_listener_waits_for_its_sds_secrets() -> None:
    """Nothing is built before the secret arrives: the context raises SecretNotReady."""
    from proxy.tls.secrets import SecretStore
    from proxy.tls.transport_socket import SecretNotReady, SecretSource

    transport = TlsTransport(TlsConfig(server_side=True, certificate=SecretSource("default", cluster="sds-grpc")),
                             SecretStore(), TlsStats())
    try:
        transport.context()
    except SecretNotReady as missing:
        assert str(missing) == "default"
    else:
        raise AssertionError("a context was built without its certificate")
