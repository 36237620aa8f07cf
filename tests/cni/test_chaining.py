"""tulle-cni as the first plugin of a conflist, chained with the reference
plugins the way libcni chains them (cni.runtime), and compared with the
reference bridge + host-local."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni.runtime import CniRuntime, NetworkConfigList, RuntimeConf
from tests.cni.conftest import BIN, REFERENCE_PLUGINS, Node
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged

PORT_MAPPINGS = [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]


def _runtime(node: Node, workdir: Path) -> CniRuntime:
    return CniRuntime([str(BIN), REFERENCE_PLUGINS], workdir / "cache", netns=f"/run/netns/{node.netns}")


def _conflist(node: Node, *chained: dict[str, Any], version: str = "1.0.0") -> NetworkConfigList:
    first = {"type": "tulle-cni", "agentSocket": str(node.socket), "ipam": {"subnet": "10.77.0.0/24"}}
    return NetworkConfigList.from_json({"cniVersion": version, "name": "tnet", "plugins": [first, *chained]})


def _serve_once(kernel: KernelResources, netns: str, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import socket,sys\n"
        f"s=socket.create_server(('0.0.0.0',{port}))\n"
        "print('ready',flush=True)\n"
        "c,_=s.accept();c.sendall(b'hello from pod');c.close()\n"
    )
    proc = kernel.spawn(netns, [sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def _client_netns(kernel: KernelResources, node: Node) -> str:
    """An 'outside' host wired to the node on 192.0.2.0/24."""
    client = kernel.netns("client")
    a, b = kernel.veth(node.netns, client)
    ip("addr", "add", "192.0.2.1/24", "dev", a, netns=node.netns)
    ip("addr", "add", "192.0.2.2/24", "dev", b, netns=client)
    ip("route", "add", "default", "via", "192.0.2.1", netns=client)
    return client


def test_portmap_publishes_a_pod_port_on_the_node(node: Node, kernel: KernelResources, workdir: Path) -> None:
    runtime = _runtime(node, workdir)
    net = _conflist(node, {"type": "portmap", "capabilities": {"portMappings": True}})
    pod = kernel.netns("pod")
    rt = RuntimeConf("c1", f"/run/netns/{pod}", capability_args={"portMappings": PORT_MAPPINGS})
    runtime.add(net, rt)
    client = _client_netns(kernel, node)
    server = _serve_once(kernel, pod, 8080)
    reply = kernel.exec(client, [sys.executable, "-c",
        "import socket;s=socket.create_connection(('192.0.2.1',18080),timeout=5);print(s.recv(100).decode())"])
    assert reply.stdout.strip() == "hello from pod", reply.stderr
    server.wait(timeout=10)


def test_del_runs_portmap_first_and_removes_its_rules(node: Node, kernel: KernelResources, workdir: Path) -> None:
    runtime = _runtime(node, workdir)
    net = _conflist(node, {"type": "portmap", "capabilities": {"portMappings": True}})
    pod = kernel.netns("pod")
    rt = RuntimeConf("c1", f"/run/netns/{pod}", capability_args={"portMappings": PORT_MAPPINGS})
    runtime.add(net, rt)
    runtime.delete(net, rt)
    rules = subprocess.run(["ip", "netns", "exec", node.netns, "iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert "18080" not in rules
    assert node.host_veths() == [] and node.attachments() == []
    assert runtime.cached_result(net, rt) is None


def test_tuning_bandwidth_and_firewall_accept_tulle_cni_as_prev_result(
    node: Node, kernel: KernelResources, workdir: Path
) -> None:
    runtime = _runtime(node, workdir)
    net = _conflist(
        node,
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        {"type": "firewall"},
    )
    pod = kernel.netns("pod")
    rt = RuntimeConf("c1", f"/run/netns/{pod}",
                     capability_args={"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 1_000_000}})
    result = runtime.add(net, rt)
    host = result["interfaces"][1]["name"]
    assert "tbf" in subprocess.run(["tc", "-n", node.netns, "qdisc", "show", "dev", host], capture_output=True, text=True).stdout
    accept = kernel.exec(pod, ["cat", "/proc/sys/net/ipv4/conf/eth0/accept_redirects"]).stdout.strip()
    assert accept == "0"
    runtime.check(net, rt)
    runtime.delete(net, rt)
    assert node.host_veths() == [] and node.attachments() == []


def test_result_matches_reference_bridge_and_host_local(node: Node, kernel: KernelResources, workdir: Path) -> None:
    shared = {"bridge": "tlref0", "isGateway": True, "isDefaultGateway": True, "mtu": 1450, "hairpinMode": True}
    tulle_net = NetworkConfigList.from_json({"cniVersion": "1.0.0", "name": "tnet", "plugins": [
        {"type": "tulle-cni", "agentSocket": str(node.socket), **shared,
         "ipam": {"subnet": "10.88.0.0/24", "routes": [{"dst": "10.200.0.0/16"}]}}]})
    ref_node = kernel.netns("refnode")
    ref_net = NetworkConfigList.from_json({"cniVersion": "1.0.0", "name": "refnet", "plugins": [
        {"type": "bridge", **shared,
         "ipam": {"type": "host-local", "subnet": "10.88.0.0/24", "routes": [{"dst": "10.200.0.0/16"}],
                  "dataDir": str(workdir / "host-local")}}]})
    tulle_pod, ref_pod = kernel.netns("pod"), kernel.netns("refpod")
    ours = _runtime(node, workdir).add(tulle_net, RuntimeConf("c1", f"/run/netns/{tulle_pod}"))
    ref_runtime = CniRuntime([REFERENCE_PLUGINS], workdir / "refcache", netns=f"/run/netns/{ref_node}")
    theirs = ref_runtime.add(ref_net, RuntimeConf("c1", f"/run/netns/{ref_pod}"))

    def shape(result: dict[str, Any], netns: str) -> dict[str, Any]:
        interfaces = result["interfaces"]
        return {
            "cniVersion": result["cniVersion"],
            "interfaces": [(i["name"] if i["name"] in ("tlref0", "eth0") else "veth", bool(i.get("mac")), i.get("sandbox")) for i in interfaces],
            "ips": result["ips"],
            "routes": sorted(result["routes"], key=lambda r: r["dst"]),
            "dns": result.get("dns", {}),
            "pod routes": sorted(ip("route", netns=netns).replace("proto static ", "").splitlines()),
        }

    expected = shape(theirs, ref_pod)
    expected["interfaces"][2] = ("eth0", True, f"/run/netns/{tulle_pod}")
    assert shape(ours, tulle_pod) == expected
    ref_runtime.delete(ref_net, RuntimeConf("c1", f"/run/netns/{ref_pod}"))


def test_runtime_gc_deletes_stale_cached_attachments_then_gcs_every_plugin(
    node: Node, kernel: KernelResources, workdir: Path
) -> None:
    runtime = _runtime(node, workdir)
    # GC is a 1.1.0 verb and Debian's reference plugins stop at 1.0.0: tulle-cni alone.
    net = _conflist(node, version="1.1.0")
    pods = [kernel.netns("pod") for _ in range(2)]
    for i, pod in enumerate(pods):
        runtime.add(net, RuntimeConf(f"c{i}", f"/run/netns/{pod}"))
    runtime.gc(net, valid=[("c1", "eth0")])
    assert [rt.container_id for rt in runtime.cached_attachments(net)] == ["c1"]
    assert [a["containerID"] for a in node.attachments()] == ["c1"]
    assert len(node.host_veths()) == 1


def test_runtime_config_ips_reach_tulle_cni_when_it_declares_the_capability(
    node: Node, kernel: KernelResources, workdir: Path
) -> None:
    runtime = _runtime(node, workdir)
    net = NetworkConfigList.from_json({"cniVersion": "1.0.0", "name": "tnet", "plugins": [
        {"type": "tulle-cni", "agentSocket": str(node.socket), "capabilities": {"ips": True},
         "ipam": {"subnet": "10.77.0.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]})
    pod = kernel.netns("pod")
    result = runtime.add(net, RuntimeConf("c1", f"/run/netns/{pod}", capability_args={"ips": ["10.77.0.99/24"]}))
    assert result["ips"][0]["address"] == "10.77.0.99/24"
    assert runtime.cached_result(net, RuntimeConf("c1", f"/run/netns/{pod}")) == result
