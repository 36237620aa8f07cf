"""Non-meshed pods reach Services by ClusterIP through the node's service table, which each
agent programs from the Services and Endpoints on its ADS stream (two-node lab, real kernel)."""

from __future__ import annotations

import collections
import ipaddress
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.lab import Lab
from cni.lab.topology import LabPod
from netpolicy.netns import socket_in

pytestmark = pytest.mark.privileged

SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080)); s.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
""")
HTTP_PORT = [{"name": "http", "containerPort": 8080}]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"sv{secrets.token_hex(3)}"
    try:
        yield Lab.up(name, nodes=2, control=True)
    finally:
        assert Lab(name).down() == []
        assert not list(Path("/etc/netns").glob(f"tl-{name}.*"))  # down removes every pod's resolv.conf


@pytest.fixture
def ns() -> str:
    return f"n{secrets.token_hex(3)}"


@pytest.fixture
def servers(lab: Lab) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def serve(lab: Lab, pod: LabPod, servers: list[subprocess.Popen[bytes]]) -> None:
    proc = lab.spawn(pod, [sys.executable, "-c", SERVER, pod.name], stdout=subprocess.PIPE)
    servers.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"


def service(lab: Lab, ns: str, name: str, selector: dict[str, str]) -> str:
    """Creates a Service (port 80 -> the pods' `http` port); returns its ClusterIP."""
    with lab.api() as api:
        api.ensure_namespace(ns)
        api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                   "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
        doc = api.get("Service", ns, name)
    assert doc is not None
    return str(doc["spec"]["clusterIP"])


def ask(pod: LabPod, address: str, port: int = 80) -> str:
    """What one connection from `pod` to address:port gets: the server's name or the error's."""
    sock = socket_in(pod.netns, socket.SOCK_STREAM)
    sock.setblocking(True)
    sock.settimeout(2)
    try:
        sock.connect((address, port))
        return sock.recv(100).decode()
    except OSError as e:
        return type(e).__name__
    finally:
        sock.close()


def answers(pod: LabPod, address: str, count: int) -> collections.Counter[str]:
    return collections.Counter(ask(pod, address) for _ in range(count))


def eventually_answered_by(pod: LabPod, address: str, expected: set[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while set(answers(pod, address, 20)) != expected:
        assert time.monotonic() < deadline, f"{address}: {answers(pod, address, 20)}, expected {expected}"
        time.sleep(0.1)


def test_a_pod_reaches_a_cluster_ip_spread_over_endpoints_on_both_nodes(lab: Lab, ns: str, servers: list) -> None:
    a = lab.add_pod(ns, "catalog-a", node="node-1", labels={"app": "catalog"}, container_ports=HTTP_PORT)
    b = lab.add_pod(ns, "catalog-b", node="node-2", labels={"app": "catalog"}, container_ports=HTTP_PORT)
    for pod in (a, b):
        serve(lab, pod, servers)
    client = lab.add_pod(ns, "client", node="node-1")
    vip = service(lab, ns, "catalog", {"app": "catalog"})
    eventually_answered_by(client, vip, {"catalog-a", "catalog-b"})
    remote_client = lab.add_pod(ns, "client-2", node="node-2")
    assert set(answers(remote_client, vip, 20)) == {"catalog-a", "catalog-b"}


def test_a_service_without_endpoints_refuses_at_once(lab: Lab, ns: str) -> None:
    client = lab.add_pod(ns, "client", node="node-2")
    vip = service(lab, ns, "nobody", {"app": "nobody"})
    deadline = time.monotonic() + 20
    while (seen := ask(client, vip)) != "ConnectionRefusedError":
        assert time.monotonic() < deadline, seen  # until the agent has the Service: no route/timeout
        time.sleep(0.1)
    assert answers(client, vip, 3) == {"ConnectionRefusedError": 3}  # a reset, not a TimeoutError


def test_a_removed_endpoint_leaves_the_service(lab: Lab, ns: str, servers: list) -> None:
    a = lab.add_pod(ns, "catalog-a", node="node-1", labels={"app": "catalog"}, container_ports=HTTP_PORT)
    b = lab.add_pod(ns, "catalog-b", node="node-2", labels={"app": "catalog"}, container_ports=HTTP_PORT)
    for pod in (a, b):
        serve(lab, pod, servers)
    client = lab.add_pod(ns, "client", node="node-1")
    vip = service(lab, ns, "catalog", {"app": "catalog"})
    eventually_answered_by(client, vip, {"catalog-a", "catalog-b"})
    lab.delete_pod(ns, "catalog-b")
    eventually_answered_by(client, vip, {"catalog-a"})


def test_an_endpoint_reaches_itself_through_its_service_with_a_policy_present(
        lab: Lab, ns: str, servers: list) -> None:
    a = lab.add_pod(ns, "catalog-a", node="node-1", labels={"app": "catalog"}, container_ports=HTTP_PORT)
    serve(lab, a, servers)
    with lab.api() as api:  # a policy selecting the pod: its forward chain classifies with the packet mark
        api.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "catalog-from-catalog", "namespace": ns},
                   "spec": {"podSelector": {"matchLabels": {"app": "catalog"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "catalog"}}}]}]}})
    vip = service(lab, ns, "catalog", {"app": "catalog"})
    eventually_answered_by(a, vip, {"catalog-a"})


RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"
TCP_QUERY = textwrap.dedent("""
    import sys
    from dnslib import DNSRecord
    reply = DNSRecord.parse(DNSRecord.question(sys.argv[1]).send(sys.argv[2], 53, tcp=True, timeout=3))
    print(" ".join(str(rr.rdata) for rr in reply.rr) or "NXDOMAIN")
""")


def in_pod(pod: LabPod, *argv: str) -> str:
    """Runs a command as `ip netns exec` does (with the pod's /etc/netns resolv.conf)."""
    done = subprocess.run(["ip", "netns", "exec", pod.netns, *argv], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr.strip()[-200:]}"


def test_pods_resolve_service_names_in_three_forms_meshed_or_not(lab: Lab, ns: str) -> None:
    vip = service(lab, ns, "catalog", {"app": "catalog"})
    plain = lab.add_pod(ns, "plain", node="node-1")
    meshed = lab.add_pod(ns, "meshed", node="node-2", annotations={"sidecar.tulle.io/inject": "true"},
                         proxy=[str(Path(sys.executable).parent / "envoy")])
    deadline = time.monotonic() + 20
    while in_pod(plain, sys.executable, "-c", RESOLVE, f"catalog.{ns}.svc.cluster.local") != vip:
        assert time.monotonic() < deadline, "the Service never resolved"
        time.sleep(0.1)
    for pod in (plain, meshed):
        for name in (f"catalog.{ns}.svc.cluster.local", f"catalog.{ns}", "catalog"):
            assert in_pod(pod, sys.executable, "-c", RESOLVE, name) == vip, (pod.name, name)


def test_unknown_names_are_not_found_and_nothing_is_forwarded(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "plain", node="node-1")
    for name in (f"nobody.{ns}.svc.cluster.local", "nobody", "example.com"):
        assert in_pod(pod, sys.executable, "-c", RESOLVE, name).startswith("failed"), name


def test_cluster_dns_answers_over_tcp(lab: Lab, ns: str) -> None:
    vip = service(lab, ns, "catalog", {"app": "catalog"})
    pod = lab.add_pod(ns, "plain", node="node-2")
    gateway = next(ipaddress.IPv4Network(f"{pod.ip}/24", strict=False).hosts())
    deadline = time.monotonic() + 20
    while (got := in_pod(pod, sys.executable, "-c", TCP_QUERY, f"catalog.{ns}.svc.cluster.local", str(gateway))) != vip:
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    assert in_pod(pod, sys.executable, "-c", TCP_QUERY, f"nobody.{ns}.svc.cluster.local", str(gateway)) == "NXDOMAIN"


def test_a_deleted_pod_and_the_lab_leave_no_resolv_conf(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "plain", node="node-1")
    assert (Path("/etc/netns") / pod.netns / "resolv.conf").exists()
    lab.delete_pod(ns, "plain")
    assert not (Path("/etc/netns") / pod.netns).exists()
