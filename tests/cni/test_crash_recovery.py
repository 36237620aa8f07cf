"""Crash-safe IPAM: an agent killed with SIGKILL mid-ADD and restarted leaks
nothing and never hands out an address twice."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest

from cni.bridge import host_ifname
from cni.ipam import AddressPool
from cni.ipam_store import AllocationKey, AllocationStore
from tests.cni.conftest import TULLE_CNI, Node, run_cni
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged


def test_restart_rolls_back_an_add_that_was_cut_short(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(3)]
    kept = run_cni("ADD", node.conf(), "c0", f"/run/netns/{pods[0]}").json["ips"][0]["address"]
    node.kill_agent()
    # The state an ADD leaves when killed between reserving and attaching: a
    # pending allocation and a veth pair already in the pod.
    store = AllocationStore(node.state_dir / "allocations.db")
    host = host_ifname("tnet", "c1", "eth0")
    key = AllocationKey("tnet", "c1", "eth0")
    store.reserve(key, AddressPool.build(ipaddress.IPv4Network("10.77.0.0/24")), (), host, f"/run/netns/{pods[1]}")
    store.close()
    ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pods[1], netns=node.netns)

    node.start_agent()

    assert node.host_veths() == [a["hostIfname"] for a in node.attachments()]
    assert [a["containerID"] for a in node.attachments()] == ["c0"]
    assert "eth0" not in ip("link", netns=pods[1])
    fresh = run_cni("ADD", node.conf(), "c2", f"/run/netns/{pods[2]}").json["ips"][0]["address"]
    assert fresh != kept


def test_restart_finishes_a_del_that_was_cut_short(node: Node, kernel: KernelResources) -> None:
    pod = kernel.netns("pod")
    assert run_cni("ADD", node.conf(), "c1", f"/run/netns/{pod}").returncode == 0
    node.kill_agent()
    # The state a DEL leaves when the agent dies right after answering.
    store = AllocationStore(node.state_dir / "allocations.db")
    store.mark_releasing(AllocationKey("tnet", "c1", "eth0"))
    store.close()

    node.start_agent()

    assert node.attachments() == []
    assert node.host_veths() == []
    assert "eth0" not in ip("link", netns=pod)


def test_sigkill_during_a_burst_of_adds_leaks_nothing_and_duplicates_nothing(node: Node, kernel: KernelResources) -> None:
    pods = [kernel.netns("pod") for _ in range(30)]
    procs = []
    for i, pod in enumerate(pods[:20]):
        env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}",
               "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        p = subprocess.Popen([TULLE_CNI], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert p.stdin is not None
        p.stdin.write(json.dumps(node.conf()).encode())
        p.stdin.close()
        procs.append(p)
    # Kill as soon as some ADDs have been attached, while others are in flight.
    deadline = time.monotonic() + 30
    # (Reads the kernel directly: asking the agent would queue behind the ADDs.)
    while time.monotonic() < deadline and sum(n.startswith("tlv") for n in node.links()) < 5:
        time.sleep(0.005)
    node.kill_agent()
    assert any(p.poll() is None for p in procs) or len(node.links()) < 22, "the agent was killed after the burst"
    succeeded = {}
    for i, p in enumerate(procs):
        assert p.stdout is not None
        out = p.stdout.read()
        if p.wait(timeout=60) == 0:
            succeeded[f"c{i}"] = json.loads(out)["ips"][0]["address"]

    node.start_agent()

    attachments = node.attachments()
    assert all(a["state"] == "attached" for a in attachments)
    assert sorted(node.host_veths()) == sorted(a["hostIfname"] for a in attachments)
    held = {a["containerID"]: f"{a['address']}/24" for a in attachments}
    assert {c: held.get(c) for c in succeeded} == succeeded
    for i, pod in enumerate(pods[20:], start=20):
        assert run_cni("ADD", node.conf(), f"c{i}", f"/run/netns/{pod}").returncode == 0
    addresses = [a["address"] for a in node.attachments()]
    assert len(addresses) == len(set(addresses))
