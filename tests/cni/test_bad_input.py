"""Bad input: the right CNI error code, a message naming the problem, and
nothing left behind (no veth, no allocation)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cni.conftest import Node, run_cni
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged


def _assert_nothing_left(node: Node) -> None:
    assert node.host_veths() == []
    assert node.attachments() == []


BAD_CONFIGS: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", '{"cniVersion": "1.1.0", ', 6, "not valid JSON"),
    ("missing cniVersion", {"name": "tnet", "type": "tulle-cni"}, 7, "cniVersion"),
    ("unsupported cniVersion", {"cniVersion": "0.2.0", "name": "tnet", "type": "tulle-cni"}, 1, "0.2.0"),
    ("missing name", {"cniVersion": "1.1.0", "type": "tulle-cni"}, 7, "name"),
    ("unknown field", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "brigde": "x"}, 2, "brigde"),
    ("unknown ipam field", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "ipam": {"subnt": "x"}}, 2, "ipam.subnt"),
    ("bad subnet", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "ipam": {"subnet": "10.0.0.300/24"}}, 7, "ipam.subnet"),
    ("delegated ipam", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "ipam": {"type": "host-local"}}, 7, "ipam.type"),
    ("range outside subnet", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "ipam": {"subnet": "10.9.0.0/24", "rangeStart": "10.8.0.5"}}, 7, "ipam.rangeStart"),
    ("bad mtu", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "mtu": 10}, 7, "mtu"),
    ("bad bridge name", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "bridge": "a-name-far-too-long"}, 7, "bridge"),
    ("hairpinMode not a bool", {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "hairpinMode": "yes"}, 7, "hairpinMode"),
]


@pytest.mark.parametrize(("conf", "code", "mentions"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_refused_with_its_code(node: Node, kernel: KernelResources, conf: Any, code: int, mentions: str) -> None:
    pod = kernel.netns("pod")
    if isinstance(conf, dict):
        conf = {**conf, "agentSocket": str(node.socket)}
    out = run_cni("ADD", conf, "c1", f"/run/netns/{pod}")
    assert out.returncode != 0
    assert out.json["code"] == code, out.json
    assert mentions in out.json["msg"]
    _assert_nothing_left(node)


BAD_ENV: list[tuple[str, dict[str, str], str]] = [
    ("unknown command", {"CNI_COMMAND": "ATTACH"}, "CNI_COMMAND"),
    ("missing container id", {"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
    ("bad container id", {"CNI_CONTAINERID": "-bad/id"}, "CNI_CONTAINERID"),
    ("missing netns", {"CNI_NETNS": ""}, "CNI_NETNS"),
    ("bad ifname", {"CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
    ("ifname too long", {"CNI_IFNAME": "a" * 16}, "CNI_IFNAME"),
    ("bad CNI_ARGS", {"CNI_ARGS": "IP"}, "CNI_ARGS"),
]


@pytest.mark.parametrize(("env", "mentions"), [c[1:] for c in BAD_ENV], ids=[c[0] for c in BAD_ENV])
def test_bad_environment_is_refused_with_code_4(node: Node, kernel: KernelResources, env: dict[str, str], mentions: str) -> None:
    pod = kernel.netns("pod")
    out = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}", extra_env=env)
    assert out.json["code"] == 4, out.json
    assert mentions in out.json["msg"]
    _assert_nothing_left(node)


def test_missing_netns_is_an_unknown_container(node: Node) -> None:
    out = run_cni("ADD", node.conf(), "c1", "/run/netns/tl-no-such-namespace")
    assert out.json["code"] == 3
    assert "/run/netns/tl-no-such-namespace" in out.json["msg"]
    _assert_nothing_left(node)


def test_a_netns_path_that_is_not_a_namespace_is_an_unknown_container(node: Node) -> None:
    not_a_netns = node.workdir / "not-a-netns"
    not_a_netns.write_text("")
    out = run_cni("ADD", node.conf(), "c1", str(not_a_netns))
    assert out.json["code"] == 3
    assert str(not_a_netns) in out.json["msg"]
    _assert_nothing_left(node)


def test_interface_name_taken_is_refused(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    ip("link", "add", "eth0", "type", "bridge", netns=pod)
    out = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}")
    assert out.json["code"] == 101
    assert "eth0" in out.json["msg"] and pod in out.json["msg"]
    _assert_nothing_left(node)
    assert "bridge" in ip("-d", "link", "show", "eth0", netns=pod)


def test_exhausted_range_is_refused_and_leaves_nothing(node: Node, kernel: KernelResources) -> None:
    conf = node.conf(ipam={"subnet": "10.78.0.0/29", "rangeStart": "10.78.0.2", "rangeEnd": "10.78.0.3"})
    pods = [kernel.netns("pod") for _ in range(3)]
    assert run_cni("ADD", conf, "c0", f"/run/netns/{pods[0]}").returncode == 0
    assert run_cni("ADD", conf, "c1", f"/run/netns/{pods[1]}").returncode == 0
    out = run_cni("ADD", conf, "c2", f"/run/netns/{pods[2]}")
    assert out.json["code"] == 102
    assert "10.78.0.0/29" in out.json["msg"]
    assert len(node.host_veths()) == 2 and len(node.attachments()) == 2
    assert "eth0" not in ip("link", netns=pods[2])


def test_requested_address_already_taken_is_refused_and_leaves_nothing(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(2)]
    assert run_cni("ADD", node.conf(), "c0", f"/run/netns/{pods[0]}", args="IP=10.77.0.9").returncode == 0
    out = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pods[1]}", args="IP=10.77.0.9")
    assert out.json["code"] == 103
    assert "10.77.0.9" in out.json["msg"]
    assert len(node.host_veths()) == 1 and len(node.attachments()) == 1
    assert "eth0" not in ip("link", netns=pods[1])


def test_failure_after_the_veth_exists_rolls_everything_back(node: Node, kernel: KernelResources) -> None:
    # A route through a gateway outside the pod's subnet fails in the kernel, after
    # the allocation and the veth pair exist: both must be undone.
    conf = node.conf(ipam={"subnet": "10.79.0.0/24", "routes": [{"dst": "10.200.0.0/16", "gw": "192.0.2.1"}]})
    pod = kernel.netns("pod")
    out = run_cni("ADD", conf, "c1", f"/run/netns/{pod}")
    assert out.json["code"] == 100
    assert "route 10.200.0.0/16 via 192.0.2.1" in out.json["msg"]
    _assert_nothing_left(node)
    assert "eth0" not in ip("link", netns=pod)


def test_second_add_for_the_same_attachment_is_refused_and_keeps_the_first(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(2)]
    assert run_cni("ADD", node.conf(), "c1", f"/run/netns/{pods[0]}").returncode == 0
    out = run_cni("ADD", node.conf(), "c1", f"/run/netns/{pods[1]}")
    assert out.json["code"] == 101
    assert len(node.host_veths()) == 1 and len(node.attachments()) == 1
    assert "eth0" in ip("link", netns=pods[0])
