"""ClusterIP services for non-meshed pods, DNATed by the node's nftables service table."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import textwrap

import pytest

from netpolicy.service_table import TABLE, Endpoint, ServicePort, service_table, service_table_diff
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged

GATEWAY = "10.97.0.1"
PODS = {"client": "10.97.0.2", "ep-a": "10.97.0.3", "ep-b": "10.97.0.4"}
VIP, EMPTY_VIP = "10.96.0.10", "10.96.0.11"

SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080)); s.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
""")

CLIENT = textwrap.dedent("""
    import json, socket, sys
    answers = []
    for _ in range(int(sys.argv[3])):
        try:
            c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
            answers.append(c.recv(100).decode()); c.close()
        except OSError as error:
            answers.append(type(error).__name__)
    print(json.dumps(answers))
""")


@pytest.fixture
def node(kernel: KernelResources) -> tuple[KernelResources, dict[str, str]]:
    node_ns = kernel.netns("node")
    bridge = kernel.bridge(node_ns)
    ip("addr", "add", f"{GATEWAY}/24", "dev", bridge, netns=node_ns)
    kernel.exec(node_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    namespaces = {"node": node_ns}
    for name, address in PODS.items():
        pod_ns = kernel.netns(name)
        pod_end, node_end = kernel.veth(pod_ns, node_ns)
        ip("link", "set", node_end, "master", bridge, netns=node_ns)
        ip("link", "set", node_end, "type", "bridge_slave", "hairpin", "on", netns=node_ns)
        ip("addr", "add", f"{address}/24", "dev", pod_end, netns=pod_ns)
        ip("route", "add", "default", "via", GATEWAY, netns=pod_ns)
        namespaces[name] = pod_ns
    for name in ("ep-a", "ep-b"):
        proc = kernel.spawn(namespaces[name], [sys.executable, "-c", SERVER, name], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    services = [
        ServicePort("shop", "catalog", VIP, 80, "TCP",
                    (Endpoint(PODS["ep-a"], 8080), Endpoint(PODS["ep-b"], 8080))),
        ServicePort("shop", "nobody", EMPTY_VIP, 80, "TCP", ()),
    ]
    done = subprocess.run(["ip", "netns", "exec", node_ns, "nft", "-j", "-f", "-"],
                          input=json.dumps(service_table(services)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kernel.nft_table(node_ns, "inet", TABLE)
    return kernel, namespaces


def answers(kernel: KernelResources, ns: str, host: str, count: int) -> collections.Counter[str]:
    done = kernel.exec(ns, [sys.executable, "-c", CLIENT, host, "80", str(count)])
    assert done.returncode == 0, done.stderr
    return collections.Counter(json.loads(done.stdout))


def test_connections_to_a_cluster_ip_spread_over_its_endpoints(node) -> None:
    kernel, namespaces = node
    seen = answers(kernel, namespaces["client"], VIP, 40)
    assert set(seen) == {"ep-a", "ep-b"}, seen


def test_a_service_without_endpoints_refuses_at_once(node) -> None:
    kernel, namespaces = node
    assert answers(kernel, namespaces["client"], EMPTY_VIP, 3) == {"ConnectionRefusedError": 3}


def test_an_endpoint_reaching_its_own_service_gets_answers_from_itself_too(node) -> None:
    kernel, namespaces = node
    seen = answers(kernel, namespaces["ep-a"], VIP, 40)
    assert set(seen) == {"ep-a", "ep-b"}, seen


def test_a_service_with_a_bad_cluster_ip_is_rejected() -> None:
    with pytest.raises(ValueError):
        ServicePort("shop", "bad", "10.96.0.300", 80, "TCP", ())


def test_a_diff_moves_endpoints_adds_and_removes_services_in_place(node) -> None:
    kernel, namespaces = node
    gone = ServicePort("shop", "gone", "10.96.0.12", 80, "TCP", (Endpoint(PODS["ep-a"], 8080),))
    old = [ServicePort("shop", "catalog", VIP, 80, "TCP", (Endpoint(PODS["ep-a"], 8080), Endpoint(PODS["ep-b"], 8080))),
           ServicePort("shop", "nobody", EMPTY_VIP, 80, "TCP", ())]
    setup = subprocess.run(["ip", "netns", "exec", namespaces["node"], "nft", "-j", "-f", "-"],
                           input=json.dumps(service_table_diff(old, [*old, gone])), capture_output=True, text=True)
    assert setup.returncode == 0, setup.stderr
    old.append(gone)
    new = [ServicePort("shop", "catalog", VIP, 80, "TCP", (Endpoint(PODS["ep-b"], 8080),)),
           ServicePort("shop", "nobody", EMPTY_VIP, 80, "TCP", (Endpoint(PODS["ep-a"], 8080),))]
    done = subprocess.run(["ip", "netns", "exec", namespaces["node"], "nft", "-j", "-f", "-"],
                          input=json.dumps(service_table_diff(old, new)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert answers(kernel, namespaces["client"], VIP, 10) == {"ep-b": 10}
    assert answers(kernel, namespaces["client"], EMPTY_VIP, 3) == {"ep-a": 3}
    chains = kernel.exec(namespaces["node"], ["nft", "list", "chains", "inet", TABLE]).stdout
    assert gone.chain not in chains
    assert service_table_diff(new, new) == {"nftables": []}
