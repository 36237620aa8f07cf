"""tulle-cni's verbs against a real agent and the real kernel (spec 1.1)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from tests.cni.conftest import TULLE_CNI, Node, run_cni
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged


def test_add_returns_bridge_veth_and_container_interfaces(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    assert out.returncode == 0, out.stdout
    result = out.json
    assert result["cniVersion"] == "1.1.0"
    bridge, host, container = result["interfaces"]
    assert bridge["name"] == "tulle0"
    assert host["name"].startswith("tlv")
    assert container == {"name": "eth0", "mac": container["mac"], "sandbox": f"/run/netns/{pod}"}
    assert result["ips"] == [{"interface": 2, "address": "10.77.0.2/24", "gateway": "10.77.0.1"}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]
    assert "10.77.0.2/24" in ip("-o", "addr", "show", "eth0", netns=pod)
    assert "default via 10.77.0.1" in ip("route", netns=pod)
    assert f"master {bridge['name']}" in ip("link", "show", host["name"], netns=node.netns)


def test_result_is_written_in_the_callers_version(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(cniVersion="0.4.0"), "c1", f"/run/netns/{pod}")
    assert out.returncode == 0, out.stdout
    assert out.json["cniVersion"] == "0.4.0"
    assert out.json["ips"][0]["version"] == "4"


def test_bridge_honours_mtu_and_hairpin_mode(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(mtu=1400, hairpinMode=True, bridge="tlbr9"), "c1", f"/run/netns/{pod}")
    assert out.returncode == 0, out.stdout
    host = out.json["interfaces"][1]["name"]
    assert "mtu 1400" in ip("link", "show", "eth0", netns=pod)
    assert "mtu 1400" in ip("link", "show", "tlbr9", netns=node.netns)
    assert "hairpin on" in ip("-d", "link", "show", host, netns=node.netns)


def test_is_gateway_false_leaves_bridge_without_address_and_pod_without_default_route(
    node: Node, kernel: KernelResources
) -> None:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(isGateway=False, isDefaultGateway=False), "c1", f"/run/netns/{pod}")
    assert out.returncode == 0, out.stdout
    assert "inet " not in ip("addr", "show", "tulle0", netns=node.netns)
    assert "default" not in ip("route", netns=pod)
    assert "gateway" not in out.json["ips"][0]


def test_pods_on_one_node_reach_each_other_and_the_gateway(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(2)]
    for i, pod in enumerate(pods):
        assert run_cni("ADD", node.conf(), f"c{i}", f"/run/netns/{pod}").returncode == 0
    assert kernel.exec(pods[0], ["busybox", "ping", "-c1", "-W2", "10.77.0.3"]).returncode == 0
    assert kernel.exec(pods[1], ["busybox", "ping", "-c1", "-W2", "10.77.0.1"]).returncode == 0


def test_requested_ip_from_cni_args_is_honoured(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}", args="IgnoreUnknown=1;IP=10.77.0.42")
    assert out.returncode == 0, out.stdout
    assert out.json["ips"][0]["address"] == "10.77.0.42/24"


def test_requested_ip_from_runtime_config_is_honoured(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(runtimeConfig={"ips": ["10.77.0.77/24"]}), "c1", f"/run/netns/{pod}")
    assert out.returncode == 0, out.stdout
    assert out.json["ips"][0]["address"] == "10.77.0.77/24"


def test_del_releases_the_address_and_removes_the_veth(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    add = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    conf = node.conf(prevResult=add.json)
    assert run_cni("DEL", conf, "c1", f"/run/netns/{pod}").returncode == 0
    assert node.host_veths() == []
    assert node.attachments() == []
    assert "eth0" not in ip("link", netns=pod)


def test_del_answers_before_the_veth_is_gone_but_later_requests_see_it_gone(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(2)]
    assert run_cni("ADD", node.conf(), "c1", f"/run/netns/{pods[0]}").returncode == 0
    assert run_cni("DEL", node.conf(), "c1", "").returncode == 0
    # The next request to the agent runs after the deferred teardown.
    assert run_cni("ADD", node.conf(), "c1", f"/run/netns/{pods[1]}").returncode == 0
    assert len(node.host_veths()) == 1
    assert "eth0" not in ip("link", netns=pods[0])


def test_del_is_idempotent_even_without_netns_or_prev_result(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    add = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    assert run_cni("DEL", node.conf(prevResult=add.json), "c1", f"/run/netns/{pod}").returncode == 0
    # containerd's second DEL: no namespace, no prevResult.
    second = run_cni("DEL", node.conf(), "c1", "")
    assert second.returncode == 0, second.stdout
    assert second.stdout == ""


def test_del_with_empty_netns_still_cleans_up(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    assert run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}").returncode == 0
    assert run_cni("DEL", node.conf(), "c1", "").returncode == 0
    assert node.host_veths() == [] and node.attachments() == []


def test_del_after_the_namespace_is_gone_succeeds(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    assert run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}").returncode == 0
    ip("netns", "del", pod)
    kernel.namespaces.remove(pod)
    assert run_cni("DEL", node.conf(), "c1", f"/run/netns/{pod}").returncode == 0
    assert node.host_veths() == [] and node.attachments() == []


def test_freed_address_is_not_reused_immediately(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(2)]
    first = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pods[0]}").json["ips"][0]["address"]
    assert run_cni("DEL", node.conf(), "c1", "").returncode == 0
    second = run_cni("ADD", node.conf(), "c2", f"/run/netns/{pods[1]}").json["ips"][0]["address"]
    assert first != second


def test_check_passes_for_a_healthy_attachment(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    add = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    out = run_cni("CHECK", node.conf(prevResult=add.json), "c1", f"/run/netns/{pod}")
    assert out.returncode == 0, out.stdout
    assert out.stdout == ""


def test_check_fails_when_the_pod_address_is_gone(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    add = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    ip("addr", "flush", "dev", "eth0", netns=pod)
    out = run_cni("CHECK", node.conf(prevResult=add.json), "c1", f"/run/netns/{pod}")
    assert out.returncode != 0
    assert out.json["code"] == 104
    assert "10.77.0.2/24" in out.json["msg"]


def test_check_fails_when_the_host_veth_is_gone(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    add = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    ip("link", "del", add.json["interfaces"][1]["name"], netns=node.netns)
    out = run_cni("CHECK", node.conf(prevResult=add.json), "c1", f"/run/netns/{pod}")
    assert out.json["code"] == 104


def test_gc_releases_attachments_not_listed_as_valid(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(3)]
    for i, pod in enumerate(pods):
        assert run_cni("ADD", node.conf(), f"c{i}", f"/run/netns/{pod}").returncode == 0
    valid = [{"containerID": "c1", "ifname": "eth0"}]
    out = run_cni("GC", node.conf(**{"cni.dev/valid-attachments": valid}))
    assert out.returncode == 0, out.stdout
    assert [a["containerID"] for a in node.attachments()] == ["c1"]
    assert len(node.host_veths()) == 1
    assert "eth0" in ip("link", netns=pods[1])
    assert "eth0" not in ip("link", netns=pods[0])


def test_gc_without_valid_attachments_is_refused(node: Node) -> None:
    out = run_cni("GC", node.conf())
    assert out.json["code"] == 7
    assert "cni.dev/valid-attachments" in out.json["msg"]


def test_status_succeeds_while_addresses_are_free(node: Node) -> None:
    out = run_cni("STATUS", node.conf())
    assert out.returncode == 0 and out.stdout == ""


def test_status_reports_not_available_when_the_pool_is_full(node: Node, kernel: KernelResources) -> None:
    conf = node.conf(ipam={"subnet": "10.78.0.0/29", "rangeStart": "10.78.0.2", "rangeEnd": "10.78.0.2"})
    pod = kernel.netns("pod")
    assert run_cni("ADD", conf, "c1", f"/run/netns/{pod}").returncode == 0
    out = run_cni("STATUS", conf)
    assert out.json["code"] == 50


def test_status_reports_not_available_without_an_agent(node: Node) -> None:
    node.kill_agent()
    out = run_cni("STATUS", node.conf())
    assert out.json["code"] == 50


def test_add_without_an_agent_says_try_again_later(node: Node, kernel: KernelResources) -> None:
    node.kill_agent()
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    assert out.returncode != 0
    assert out.json["code"] == 11
    assert "tulle-agent is not reachable" in out.json["msg"]


def test_fifty_concurrent_adds_get_fifty_distinct_addresses(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(50)]
    procs = []
    for i, pod in enumerate(pods):
        env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}",
               "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        p = subprocess.Popen([TULLE_CNI], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert p.stdin is not None
        p.stdin.write(json.dumps(node.conf()).encode())
        p.stdin.close()
        procs.append(p)
    addresses = []
    for p in procs:
        assert p.stdout is not None
        out = p.stdout.read()
        assert p.wait(timeout=120) == 0, out
        addresses.append(ipaddress.IPv4Interface(json.loads(out)["ips"][0]["address"]).ip)
    assert len(set(addresses)) == 50
    assert len(node.host_veths()) == 50
