"""tulle-control lets no one in who does not belong, checked against a real tulle-control
process: on its mTLS port a client without a certificate, with one from another CA or
with an expired one gets nothing (config API, xDS, CA); an agent's certificate acts for
its own node only; a sidecar's reads only its own pod's config; an operator's may use
the config API. Operator and agent credentials come from `tulle-control issue-cert`."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import SpiffeId
from control.meshctl.client import ConfigClient
from control.xds.resources import CLUSTER, SECRET
from netpolicy.agent.control_credentials import CertificateRenewer
from netpolicy.agent.control_link import (
    AdsClient,
    ConfigApi,
    ControlError,
    ControlTls,
    register_node,
)
from proto.tulle.config.v1 import config_pb2, config_pb2_grpc
from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc
from tests.ca.test_authority import csr_for
from tests.control.control_process import MESHCTL, TULLE_CONTROL, ControlProcess, start_control
from tests.ports import free_port

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CSDS = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"
TD = "cluster.local"
SIDECAR_WEB = "sidecar~10.244.1.4~web-1.shop~shop.svc.cluster.local"
SIDECAR_DB = "sidecar~10.244.2.5~db-1.data~data.svc.cluster.local"


@dataclass(frozen=True)
class Credentials:
    """A client's PEM files, as `issue-cert` writes them; without cert and key, a TLS
    client that presents no certificate."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def channel(self, address: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes() if self.key else None,
                                             self.cert.read_bytes() if self.cert else None)
        return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "tulle-control")])


@dataclass
class Cluster:
    control: ControlProcess
    ca: CertificateAuthority
    dir: Path
    socket: Path

    @property
    def address(self) -> str:
        return self.control.tls_address

    @property
    def roots(self) -> Path:
        return self.control.state_dir / "ca" / "ca-cert.pem"

    def issue_cert(self, kind: str, name: str, ttl: str = "720h") -> Credentials:
        out = self.dir / f"{kind}-{name}"
        subprocess.run([str(TULLE_CONTROL), "issue-cert", "--kind", kind, "--name", name, "--out", str(out),
                        "--ttl", ttl, "--state-dir", str(self.control.state_dir)],
                       check=True, capture_output=True, timeout=30)
        return Credentials(out / "ca.pem", out / "cert.pem", out / "key.pem")

    def workload_cert(self, namespace: str, sa: str, ca: CertificateAuthority | None = None,
                      issued_at: dt.datetime | None = None, ttl: dt.timedelta = dt.timedelta(hours=1)) -> Credentials:
        """A sidecar's certificate (as its node agent obtains it), or one from `ca`, or
        one issued at `issued_at` (in the past: expired)."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = (ca or self.ca).issue(csr_for(key=key), SpiffeId(TD, namespace, sa),
                                       issued_at or dt.datetime.now(dt.UTC), ttl)
        out = self.dir / f"workload-{namespace}-{sa}-{os.urandom(3).hex()}"
        out.mkdir()
        (out / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        (out / "cert.pem").write_bytes(issued.chain_pem())
        (out / "ca.pem").write_bytes(self.roots.read_bytes())
        return Credentials(out / "ca.pem", out / "cert.pem", out / "key.pem")

    @contextlib.contextmanager
    def local(self) -> Iterator[ConfigClient]:
        """The config API as root on the control host: over the unix socket."""
        client = ConfigClient(f"unix:{self.socket}")
        try:
            yield client
        finally:
            client.close()


def pod(ns: str, name: str, sa: str, node: str = "", ip: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": sa, "containers": [{"name": "a", "image": "a"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec,
            "status": {"podIP": ip} if ip else {}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One tulle-control with a root-only socket and an mTLS port, and no plaintext port.
    The socket's directory sits in one everyone may enter, as /run/tulle in /run."""
    tmp = tmp_path_factory.mktemp("control-mtls")
    public = Path(tempfile.mkdtemp(prefix="tulle-ctlsec-"))
    public.chmod(0o755)
    sock = public / "run" / "control.sock"
    control = start_control(tmp / "control", "--socket", str(sock), listen=("--listen-tls", "127.0.0.1:0"))
    try:
        ca = CertificateAuthority.from_files(tmp / "control" / "ca" / "ca-cert.pem",
                                             tmp / "control" / "ca" / "ca-key.pem", TD)
        c = Cluster(control, ca, tmp, sock)
        with c.local() as api:
            api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in ("shop", "data")])
            api.apply([pod("shop", "web-1", "frontend", "node-a", "10.244.1.4"),
                       pod("data", "db-1", "postgres", "node-b", "10.244.2.5")])
        yield c
    finally:
        control.stop()
        shutil.rmtree(public, ignore_errors=True)


def code_of(work: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        work()
    code: grpc.StatusCode = error.value.code()
    return code


def status(client: Credentials, address: str) -> config_pb2.StatusResponse:
    with client.channel(address) as ch:
        response: config_pb2.StatusResponse = config_pb2_grpc.ConfigStub(ch).Status(config_pb2.StatusRequest(),
                                                                                   timeout=5)
        return response


def ads(client: Credentials | None, address: str, node_id: str, type_url: str = CLUSTER,
        plaintext: bool = False) -> discovery_pb2.DiscoveryResponse:
    """The first response of an ADS stream asking for `type_url` as `node_id`."""
    ch = grpc.insecure_channel(address) if plaintext or client is None else client.channel(address)
    done = threading.Event()

    def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
        yield discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=type_url)
        done.wait(10)

    with ch:
        call = ch.stream_stream(ADS, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                response_deserializer=discovery_pb2.DiscoveryResponse.FromString)(requests(), timeout=5)
        try:
            response: discovery_pb2.DiscoveryResponse = next(call)
            return response
        finally:
            done.set()
            call.cancel()


def csds(client: Credentials, address: str) -> csds_pb2.ClientStatusResponse:
    with client.channel(address) as ch:
        call = ch.unary_unary(CSDS, request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                              response_deserializer=csds_pb2.ClientStatusResponse.FromString)
        response: csds_pb2.ClientStatusResponse = call(csds_pb2.ClientStatusRequest(), timeout=5)
        return response


def sign(client: Credentials, address: str, node: str, namespace: str, name: str) -> ca_pb2.CertificateResponse:
    with client.channel(address) as ch:
        response: ca_pb2.CertificateResponse = ca_pb2_grpc.CertificateServiceStub(ch).CreateCertificate(
            ca_pb2.CertificateRequest(csr=csr_for().decode(), node=node, pod_namespace=namespace, pod_name=name),
            timeout=5)
        return response


def meshctl(cluster: Cluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MESHCTL), "--server", cluster.address, *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


# -- who gets nothing --------------------------------------------------------------------


def test_a_client_without_a_certificate_gets_nothing(cluster: Cluster) -> None:
    nobody = Credentials(cluster.roots)
    assert code_of(lambda: status(nobody, cluster.address)) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: ads(nobody, cluster.address, SIDECAR_WEB)) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: sign(nobody, cluster.address, "node-a", "shop", "web-1")) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_gets_nothing(cluster: Cluster, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca", TD, dt.datetime.now(dt.UTC))
    forged = cluster.workload_cert("shop", "frontend", ca=other)
    assert code_of(lambda: status(forged, cluster.address)) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: ads(forged, cluster.address, SIDECAR_WEB)) == grpc.StatusCode.UNAVAILABLE


def test_an_expired_certificate_gets_nothing(cluster: Cluster) -> None:
    expired = cluster.workload_cert("shop", "frontend", issued_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    assert code_of(lambda: status(expired, cluster.address)) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: ads(expired, cluster.address, SIDECAR_WEB)) == grpc.StatusCode.UNAVAILABLE


def test_meshctl_without_credentials_cannot_reach_the_mtls_port(cluster: Cluster) -> None:
    result = meshctl(cluster, "get", "pods", "-A")
    assert result.returncode == 3 and "give --cert" in result.stderr, result.stderr


def test_a_workload_certificate_may_not_use_the_config_api(cluster: Cluster) -> None:
    web = cluster.workload_cert("shop", "frontend")
    assert code_of(lambda: status(web, cluster.address)) == grpc.StatusCode.PERMISSION_DENIED
    result = meshctl(cluster, "--cert", str(web.cert), "get", "pods", "-A")  # key.pem, ca.pem beside it
    assert result.returncode == 1 and "Forbidden" in result.stderr, result.stderr


# -- operators ---------------------------------------------------------------------------


def test_an_operator_certificate_uses_the_config_api_through_meshctl(cluster: Cluster) -> None:
    alice = cluster.issue_cert("operator", "alice")
    assert alice.key is not None and (alice.key.stat().st_mode & 0o777) == 0o600
    result = meshctl(cluster, "get", "pods", "-A", "-o", "json", env={"TULLE_CERT": str(alice.cert)})
    assert result.returncode == 0, result.stderr
    assert {p["metadata"]["name"] for p in json.loads(result.stdout)["items"]} >= {"web-1", "db-1"}


def test_meshctl_reads_proxy_status_over_mtls_with_an_operator_certificate(cluster: Cluster) -> None:
    alice = cluster.issue_cert("operator", "carol")
    result = meshctl(cluster, "--cert", str(alice.cert), "proxy-status", "--xds", cluster.address)
    assert result.returncode == 0, result.stderr


def test_only_an_operator_reads_every_proxys_status(cluster: Cluster) -> None:
    csds(cluster.issue_cert("operator", "bob"), cluster.address)
    for client in (cluster.workload_cert("shop", "frontend"), cluster.issue_cert("agent", "node-a")):
        assert code_of(lambda c=client: csds(c, cluster.address)) == grpc.StatusCode.PERMISSION_DENIED


# -- sidecars ----------------------------------------------------------------------------


def test_a_sidecar_reads_its_own_pods_config(cluster: Cluster) -> None:
    web = cluster.workload_cert("shop", "frontend")
    assert ads(web, cluster.address, SIDECAR_WEB).type_url == CLUSTER


def test_a_sidecar_cannot_read_another_namespaces_config_or_secrets(cluster: Cluster) -> None:
    web = cluster.workload_cert("shop", "frontend")
    for type_url in (CLUSTER, SECRET):
        code = code_of(lambda t=type_url: ads(web, cluster.address, SIDECAR_DB, t))
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_sidecar_cannot_obtain_certificates(cluster: Cluster) -> None:
    web = cluster.workload_cert("shop", "frontend")
    for ns, name, node in (("shop", "web-1", "node-a"), ("data", "db-1", "node-b")):
        code = code_of(lambda a=(node, ns, name): sign(web, cluster.address, *a))
        assert code == grpc.StatusCode.PERMISSION_DENIED


# -- agents ------------------------------------------------------------------------------


def agent_tls(credentials: Credentials) -> ControlTls:
    assert credentials.cert is not None and credentials.key is not None
    return ControlTls(credentials.cert, credentials.key, credentials.ca)


def test_an_agent_registers_its_own_node_and_gets_its_pod_cidr(cluster: Cluster) -> None:
    api = ConfigApi(cluster.address, tls=agent_tls(cluster.issue_cert("agent", "node-a")))
    try:
        cidr = register_node(api, "node-a", ipaddress.IPv4Address("192.0.2.1"), "02:00:00:00:00:01", timeout=10)
    finally:
        api.close()
    assert cidr.prefixlen == 24


def leaf_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_an_agent_renews_its_certificate_for_the_same_lifetime_and_its_channels_present_the_new_one(
        cluster: Cluster) -> None:
    credentials = cluster.issue_cert("agent", "node-a", ttl="4s")
    assert credentials.cert is not None and credentials.key is not None
    first_pem, first_key = credentials.cert.read_bytes(), credentials.key.read_bytes()
    first = leaf_of(first_pem)
    tls = agent_tls(credentials)
    api = ConfigApi(cluster.address, tls=tls)
    try:
        register_node(api, "node-a", ipaddress.IPv4Address("192.0.2.1"), "02:00:00:00:00:01", timeout=10)
        time.sleep(max((first.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() - 2, 0))
        CertificateRenewer(cluster.address, "node-a", tls).renew()   # 2 s before the first expires
        renewed = leaf_of(credentials.cert.read_bytes())
        assert renewed.serial_number != first.serial_number and tls.generation == 1
        assert (renewed.not_valid_after_utc - renewed.not_valid_before_utc
                == first.not_valid_after_utc - first.not_valid_before_utc)   # never longer than issued
        assert renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier) == [f"spiffe://{TD}/ns/tulle-system/sa/tulle-agent.node-a"]
        assert stat.S_IMODE(credentials.key.stat().st_mode) == 0o600
        while dt.datetime.now(dt.UTC) <= first.not_valid_after_utc:
            time.sleep(0.1)
        assert api.get("Node", "", "node-a") is not None   # a new channel, with the new certificate ...
    finally:
        api.close()
    stale = Credentials(credentials.ca, credentials.cert.with_name("first.pem"), credentials.key.with_name("first.key"))
    assert stale.cert is not None and stale.key is not None
    stale.cert.write_bytes(first_pem)
    stale.key.write_bytes(first_key)
    # ... which it needed: the first one is refused by now
    assert code_of(lambda: sign(stale, cluster.address, "node-a", "", "")) == grpc.StatusCode.UNAVAILABLE


def test_only_the_agent_of_a_node_renews_that_nodes_agent_certificate(cluster: Cluster) -> None:
    def renew(client: Credentials | None, node: str) -> ca_pb2.CertificateResponse:
        request = ca_pb2.CertificateRequest(csr=csr_for().decode(), node=node, node_agent=True)
        channel = client.channel(cluster.address) if client else grpc.insecure_channel(f"unix:{cluster.socket}")
        with channel:
            response: ca_pb2.CertificateResponse = ca_pb2_grpc.CertificateServiceStub(channel).CreateCertificate(
                request, timeout=5)
            return response

    agent = cluster.issue_cert("agent", "node-a")
    assert renew(agent, "node-a").identity == f"spiffe://{TD}/ns/tulle-system/sa/tulle-agent.node-a"
    for client in (agent, cluster.issue_cert("operator", "alice"), cluster.workload_cert("shop", "frontend"), None):
        assert code_of(lambda c=client: renew(c, "node-b")) == grpc.StatusCode.PERMISSION_DENIED


def test_an_agent_cannot_register_another_node(cluster: Cluster) -> None:
    api = ConfigApi(cluster.address, tls=agent_tls(cluster.issue_cert("agent", "node-a")))
    try:
        # refused at its first step, reading Node node-b (which it may not, existing or not)
        with pytest.raises(ControlError, match="may not read Node node-b"):
            register_node(api, "node-b", ipaddress.IPv4Address("192.0.2.2"), "02:00:00:00:00:02", timeout=1)
    finally:
        api.close()


def test_an_agent_binds_an_unbound_pod_to_its_node_and_reports_its_address(cluster: Cluster) -> None:
    with cluster.local() as local:
        local.apply([pod("shop", "new-1", "frontend")])
    api = ConfigApi(cluster.address, tls=agent_tls(cluster.issue_cert("agent", "node-a")))
    try:
        doc = api.get("Pod", "shop", "new-1")
        assert doc is not None
        bound = api.apply({**doc, "spec": {**doc["spec"], "nodeName": "node-a"}, "status": {"podIP": "10.244.1.9"}})
    finally:
        api.close()
    assert bound["spec"]["nodeName"] == "node-a"


def test_an_agent_may_not_touch_another_nodes_pods_or_change_a_pod_beyond_binding(cluster: Cluster) -> None:
    api = ConfigApi(cluster.address, tls=agent_tls(cluster.issue_cert("agent", "node-a")))
    try:
        with cluster.local() as local:
            db = local.get("Pod", "data", "db-1")
            web = local.get("Pod", "shop", "web-1")
        refusals = [
            lambda: api.get("Pod", "data", "db-1"),  # bound to node-b
            lambda: api.apply({**db, "status": {"podIP": "10.244.1.66"}}),
            lambda: api.apply({**web, "spec": {**web["spec"], "serviceAccountName": "admin"}}),
            lambda: api.apply({**web, "spec": {**web["spec"], "nodeName": "node-b"}}),
            lambda: api.apply(pod("shop", "planted", "frontend", "node-a")),
            lambda: api.stub.List(config_pb2.ListRequest(kind="Pod"), timeout=5),
        ]
        for refused in refusals:
            with pytest.raises((grpc.RpcError, ControlError)) as error:
                refused()
            assert "PERMISSION_DENIED" in str(error.value) or "may not" in str(error.value)
    finally:
        api.close()


def test_an_agent_cannot_tell_another_nodes_pod_from_a_missing_one(cluster: Cluster) -> None:
    api = ConfigApi(cluster.address, tls=agent_tls(cluster.issue_cert("agent", "node-a")))

    def get() -> tuple[grpc.StatusCode, str]:
        try:
            api.stub.Get(config_pb2.GetRequest(ref=config_pb2.ObjectRef(kind="Pod", namespace="data", name="probe-1")),
                         timeout=5)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
        raise AssertionError("the agent read another node's pod")

    try:
        with cluster.local() as local:
            local.apply([pod("data", "probe-1", "db", "node-b")])
        elsewhere = get()
        with cluster.local() as local:
            local.delete("Pod", "data", "probe-1")
        missing = get()
    finally:
        api.close()
    assert elsewhere == missing
    assert elsewhere[0] == grpc.StatusCode.PERMISSION_DENIED


def test_an_agent_is_told_its_own_node_is_not_registered_yet(cluster: Cluster) -> None:
    api = ConfigApi(cluster.address, tls=agent_tls(cluster.issue_cert("agent", "node-unregistered")))
    try:
        assert api.get("Node", "", "node-unregistered") is None  # NOT_FOUND, as before registering
    finally:
        api.close()


def test_an_agent_follows_the_ads_stream_of_its_own_node_only(cluster: Cluster) -> None:
    node_a = cluster.issue_cert("agent", "node-a")
    received = threading.Event()

    def handle(type_url: str, resources: Any, removed: list[str], replace: bool) -> None:
        received.set()

    client = AdsClient(cluster.address, "node-a", ipaddress.IPv4Address("192.0.2.1"), handle, agent_tls(node_a))
    client.start()
    try:
        assert received.wait(10)
    finally:
        client.close()
    code = code_of(lambda: ads(node_a, cluster.address, "agent~192.0.2.2~node-b~cluster.local"))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_an_agent_gets_certificates_for_its_own_nodes_pods_only(cluster: Cluster) -> None:
    node_a = cluster.issue_cert("agent", "node-a")
    assert sign(node_a, cluster.address, "node-a", "shop", "web-1").identity == f"spiffe://{TD}/ns/shop/sa/frontend"
    for args in (("node-b", "data", "db-1"), ("node-a", "data", "db-1")):
        assert code_of(lambda a=args: sign(node_a, cluster.address, *a)) == grpc.StatusCode.PERMISSION_DENIED


# -- the local socket and plaintext ------------------------------------------------------


@pytest.mark.privileged  # runs the probe as nobody
def test_the_local_socket_is_root_only(cluster: Cluster) -> None:
    sock = cluster.socket
    assert stat.S_ISSOCK(sock.stat().st_mode) and (sock.stat().st_mode & 0o777) == 0o600
    assert (sock.parent.stat().st_mode & 0o777) == 0o700
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n")
    nobody = subprocess.run(["python3", "-c", probe, str(sock)], user=65534, group=65534, timeout=10)
    assert nobody.returncode == 13
    with cluster.local() as root:
        assert root.status().version


def test_without_plaintext_flags_nothing_listens_in_plaintext(cluster: Cluster) -> None:
    assert cluster.control.address == ""
    with grpc.insecure_channel(cluster.address) as ch:
        code = code_of(lambda: config_pb2_grpc.ConfigStub(ch).Status(config_pb2.StatusRequest(), timeout=3))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_plaintext_xds_only_when_enabled_explicitly_and_with_a_warning(tmp_path: Path) -> None:
    port = free_port()
    xds_socket = tmp_path / "xds.sock"
    control = start_control(tmp_path / "control", "--xds-listen", f"127.0.0.1:{port}",
                            "--xds-listen", f"unix:{xds_socket}", listen=("--listen-tls", ""))
    try:
        assert ads(None, f"127.0.0.1:{port}", SIDECAR_WEB, plaintext=True).type_url == CLUSTER
        assert "plaintext (--xds-listen)" in control.log()
        assert control.tls_address == "" and control.address == ""
        assert (xds_socket.stat().st_mode & 0o777) == 0o600  # a unix-socket caller is trusted like root
    finally:
        control.stop()
