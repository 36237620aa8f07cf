"""The VXLAN overlay between two nodes: static routes, neighbours and FDB entries
from the node list, and pod-to-pod TCP and UDP across nodes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cni.wire import call
from tests.cni.conftest import Node, run_cni
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged

NODE_LIST = [
    {"name": "node-a", "underlayIp": "192.168.77.1", "podCidr": "10.77.0.0/24"},
    {"name": "node-b", "underlayIp": "192.168.77.2", "podCidr": "10.78.0.0/24"},
]


@pytest.fixture
def two_nodes(kernel: KernelResources, workdir: Path) -> tuple[Node, Node]:
    underlay = kernel.netns("ul")
    switch = kernel.bridge(underlay)
    nodes_file = workdir / "nodes.json"
    nodes_file.write_text(json.dumps(NODE_LIST))
    nodes = []
    for entry in NODE_LIST:
        ns = kernel.netns("node")
        node_end, ul_end = kernel.veth(ns, underlay)
        ip("link", "set", ul_end, "master", switch, netns=underlay)
        ip("addr", "add", f"{entry['underlayIp']}/24", "dev", node_end, netns=ns)
        home = workdir / entry["name"]
        home.mkdir()
        node = Node(kernel, ns, home, pod_cidr=entry["podCidr"], name=entry["name"])
        node.start_agent(nodes_file)
        nodes.append(node)
    return nodes[0], nodes[1]


def _pod(kernel: KernelResources, node: Node, container_id: str) -> tuple[str, str]:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(mtu=1450), container_id, f"/run/netns/{pod}")
    assert out.returncode == 0, out.stdout
    return pod, out.json["ips"][0]["address"].split("/")[0]


def test_each_node_programs_one_static_entry_of_each_kind_per_peer(two_nodes: tuple[Node, Node]) -> None:
    a, _ = two_nodes
    assert "10.78.0.0/24 via 10.78.0.0 dev tulle.vx proto static onlink" in ip("route", netns=a.netns)
    assert "10.78.0.0 lladdr 0e:74:c0:a8:4d:02 PERMANENT" in ip("neigh", "show", "dev", "tulle.vx", netns=a.netns)
    fdb = subprocess.run(["bridge", "-n", a.netns, "fdb", "show", "dev", "tulle.vx"], capture_output=True, text=True).stdout
    assert "0e:74:c0:a8:4d:02 dst 192.168.77.2 self permanent" in fdb
    details = ip("-d", "link", "show", "tulle.vx", netns=a.netns)
    assert "vxlan id 1" in details and "dstport 8472" in details and "nolearning" in details


def test_pods_on_different_nodes_exchange_tcp_and_udp(two_nodes: tuple[Node, Node], kernel: KernelResources) -> None:
    a, b = two_nodes
    pod_a, _ = _pod(kernel, a, "ca")
    pod_b, addr_b = _pod(kernel, b, "cb")
    server = kernel.spawn(pod_b, [sys.executable, "-c", (
        "import socket\n"
        "t=socket.create_server(('0.0.0.0',7000)); u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('0.0.0.0',7001))\n"
        "print('ready',flush=True)\n"
        "c,_=t.accept(); c.sendall(c.recv(100).upper()); c.close()\n"
        "d,peer=u.recvfrom(100); u.sendto(d.upper(),peer)\n"
    )], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    client = kernel.exec(pod_a, [sys.executable, "-c", (
        "import socket\n"
        f"t=socket.create_connection(('{addr_b}',7000),timeout=5); t.sendall(b'tcp'); print(t.recv(100).decode())\n"
        "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(5)\n"
        f"u.sendto(b'udp',('{addr_b}',7001)); print(u.recvfrom(100)[0].decode())\n"
    )])
    assert client.stdout.split() == ["TCP", "UDP"], client.stderr
    server.wait(timeout=10)


def test_a_large_tcp_transfer_fits_the_overlay_mtu(two_nodes: tuple[Node, Node], kernel: KernelResources) -> None:
    a, b = two_nodes
    pod_a, _ = _pod(kernel, a, "ca")
    pod_b, addr_b = _pod(kernel, b, "cb")
    server = kernel.spawn(pod_b, [sys.executable, "-c", (
        "import socket\n"
        "t=socket.create_server(('0.0.0.0',7000)); print('ready',flush=True)\n"
        "c,_=t.accept(); n=0\n"
        "while (d:=c.recv(65536)): n+=len(d)\n"
        "c.sendall(str(n).encode()); c.close()\n"
    )], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    client = kernel.exec(pod_a, [sys.executable, "-c", (
        "import socket\n"
        f"t=socket.create_connection(('{addr_b}',7000),timeout=10); t.sendall(b'x'*2_000_000); t.shutdown(socket.SHUT_WR)\n"
        "print(t.recv(100).decode())\n"
    )])
    assert client.stdout.strip() == "2000000", client.stderr
    server.wait(timeout=10)


def test_removing_a_node_from_the_list_removes_its_entries(two_nodes: tuple[Node, Node]) -> None:
    a, _ = two_nodes
    reply = call(str(a.socket), {"op": "set-nodes", "nodes": NODE_LIST[:1]})
    assert reply == {"ok": True, "peers": 0}
    assert "10.78.0.0" not in ip("route", netns=a.netns)
    assert "10.78.0.0" not in ip("neigh", "show", "dev", "tulle.vx", netns=a.netns)
    fdb = subprocess.run(["bridge", "-n", a.netns, "fdb", "show", "dev", "tulle.vx"], capture_output=True, text=True).stdout
    assert "192.168.77.2" not in fdb


def test_a_bad_node_list_is_refused_and_changes_nothing(two_nodes: tuple[Node, Node]) -> None:
    a, _ = two_nodes
    before = ip("route", netns=a.netns)
    reply = call(str(a.socket), {"op": "set-nodes", "nodes": [*NODE_LIST, {"name": "node-c", "underlayIp": "192.168.77.3", "podCidr": "10.78.0.0/25"}]})
    assert "nodes[2].podCidr" in reply["error"]
    assert ip("route", netns=a.netns) == before


def test_sighup_reloads_the_nodes_file(two_nodes: tuple[Node, Node], workdir: Path) -> None:
    a, _ = two_nodes
    third = {"name": "node-c", "underlayIp": "192.168.77.3", "podCidr": "10.79.0.0/24"}
    (workdir / "nodes.json").write_text(json.dumps([*NODE_LIST, third]))
    assert a.proc is not None
    a.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "10.79.0.0/24" not in ip("route", netns=a.netns):
        time.sleep(0.05)
    assert "10.79.0.0/24 via 10.79.0.0 dev tulle.vx" in ip("route", netns=a.netns)
    assert call(str(a.socket), {"op": "status"})["peers"] == ["node-b", "node-c"]
