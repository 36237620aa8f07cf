"""tulle-agent joined to tulle-control, in a lab on the real kernel: registration, pod
status, policies pushed over ADS and ACKed, fail-closed pod start, pod removal, the node
list, and agent restarts."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cni.lab import Lab, LabError
from cni.lab.topology import LabPod
from control.meshctl import enforcement
from netpolicy.netns import socket_in

pytestmark = pytest.mark.privileged

DENY_INGRESS_TO_WEB = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "deny-web", "namespace": "{ns}"},
    "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"ta{secrets.token_hex(3)}"
    try:
        yield Lab.up(name, nodes=2, control=True)
    finally:
        assert Lab(name).down() == []


@pytest.fixture
def ns(lab: Lab) -> str:
    """A namespace of the test's own (the lab is shared by the module)."""
    return f"n{secrets.token_hex(3)}"


def eventually(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def policy(ns: str) -> dict[str, object]:
    doc = json.loads(json.dumps(DENY_INGRESS_TO_WEB).replace("{ns}", ns))
    assert isinstance(doc, dict)
    return doc


def connects(src: LabPod, dst: LabPod, port: int = 80, timeout: float = 1.0) -> bool:
    sock = socket_in(src.netns, socket.SOCK_STREAM)
    sock.setblocking(True)
    sock.settimeout(timeout)
    try:
        sock.connect((str(dst.ip), port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def listen(pod: LabPod, port: int = 80) -> socket.socket:
    sock = socket_in(pod.netns, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    return sock


def enforced_everywhere(lab: Lab, ns: str, name: str) -> bool:
    """Every agent ACKed the policy's current version (read over CSDS from the lab)."""
    with lab.api() as api:
        doc = api.get("NetworkPolicy", ns, name)
    assert doc is not None
    held = enforcement.read(lab.control_addresses()["TULLE_XDS_ADDRESS"])
    return held.nodes_enforcing("NetworkPolicy", f"{ns}/{name}", doc["metadata"]["resourceVersion"]) == held.agents


def routes(lab: Lab, node: str) -> str:
    target = next(n for n in lab.nodes() if n.name == node)
    return lab.exec_on_node(target, ["ip", "route"], capture_output=True, check=True).stdout


def test_agents_register_their_nodes_with_underlay_address_and_allocated_pod_cidr(lab: Lab) -> None:
    with lab.api() as api:
        for node in lab.nodes():
            doc = api.get("Node", "", node.name)
            assert doc is not None
            assert {"type": "InternalIP", "address": str(node.underlay_ip)} in doc["status"]["addresses"]
            assert ipaddress.IPv4Network(doc["spec"]["podCIDR"]) == node.pod_cidr


def test_agent_reports_the_address_and_node_of_each_pod_it_attaches(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "a", node="node-2", labels={"app": "a"})

    def reported() -> bool:
        with lab.api() as api:
            doc = api.get("Pod", ns, "a")
        assert doc is not None
        return doc["spec"].get("nodeName") == "node-2" and doc.get("status", {}).get("podIP") == str(pod.ip)

    eventually(reported)
    assert lab.api().get("Pod", ns, "a")["metadata"]["labels"] == {"app": "a"}  # type: ignore[index]


def test_policy_applied_through_the_api_is_acked_by_every_agent_and_enforced_across_nodes(lab: Lab, ns: str) -> None:
    web = lab.add_pod(ns, "web", node="node-1", labels={"app": "web"})
    client = lab.add_pod(ns, "client", node="node-2", labels={"app": "client"})
    server = listen(web)
    try:
        assert connects(client, web)
        with lab.api() as api:
            api.apply(policy(ns))
        eventually(lambda: enforced_everywhere(lab, ns, "deny-web"))
        assert not connects(client, web)
        with lab.api() as api:
            api.delete("NetworkPolicy", ns, "deny-web")
        eventually(lambda: connects(client, web, timeout=0.5))
    finally:
        server.close()


def test_a_pod_selected_by_a_policy_is_unreachable_as_soon_as_its_add_returns(lab: Lab, ns: str) -> None:
    client = lab.add_pod(ns, "client", node="node-1", labels={"app": "client"})
    with lab.api() as api:
        api.apply(policy(ns))
    eventually(lambda: enforced_everywhere(lab, ns, "deny-web"))
    # Same node and the other node: no probe may ever get through, not even the first.
    for node in ("node-1", "node-2"):
        web = lab.add_pod(ns, f"web-{node}", node=node, labels={"app": "web"})
        server = listen(web)
        try:
            assert not connects(client, web, timeout=0.5)
        finally:
            server.close()
    other = lab.add_pod(ns, "other", node="node-2", labels={"app": "other"})
    server = listen(other)
    try:
        assert connects(client, other)  # the node is not simply dropping everything
    finally:
        server.close()


def test_cni_add_fails_for_a_pod_the_control_plane_does_not_know_and_leaves_nothing(lab: Lab, ns: str) -> None:
    node = lab.nodes()[0]
    before = lab.exec_on_node(node, ["ip", "-br", "link"], capture_output=True, check=True).stdout
    netns = f"tl-{lab.name}.p-unknown{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        runtime, net, rt = lab._cni(node, netns, secrets.token_hex(16), ns, "ghost", ())
        with pytest.raises(Exception, match="does not exist in tulle-control"):
            runtime.add(net, rt)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)
    after = lab.exec_on_node(node, ["ip", "-br", "link"], capture_output=True, check=True).stdout
    assert after == before


def test_pod_removal_removes_its_elements_from_the_ruleset(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "gone", node="node-1", labels={"app": "gone"})
    node = lab.nodes()[0]

    def ruleset() -> str:
        return lab.exec_on_node(node, ["nft", "list", "ruleset"], capture_output=True, check=True).stdout

    assert str(pod.ip) in ruleset()
    lab.delete_pod(ns, "gone")
    eventually(lambda: str(pod.ip) not in ruleset())  # DEL finishes its teardown after replying
    with lab.api() as api:
        assert api.get("Pod", ns, "gone") is None


def test_a_node_joining_the_cluster_gets_an_overlay_route_on_every_other_node(lab: Lab) -> None:
    name = f"node-j{secrets.token_hex(2)}"
    with lab.api() as api:
        api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                   "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.99"}]}})

        def cidr() -> str:
            doc = api.get("Node", "", name)
            return str((doc or {}).get("spec", {}).get("podCIDR", ""))

        eventually(cidr)
        joined = cidr()
        try:
            for node in ("node-1", "node-2"):
                eventually(lambda node=node: f"{joined} via " in routes(lab, node))  # type: ignore[misc]
        finally:
            api.delete("Node", "", name)
        for node in ("node-1", "node-2"):
            eventually(lambda node=node: f"{joined} via " not in routes(lab, node))  # type: ignore[misc]


def test_an_agent_restart_keeps_the_kernel_rules_until_the_new_agent_replaces_them(lab: Lab, ns: str) -> None:
    web = lab.add_pod(ns, "web", node="node-1", labels={"app": "web"})
    client = lab.add_pod(ns, "client", node="node-2", labels={"app": "client"})
    with lab.api() as api:
        api.apply(policy(ns))
    eventually(lambda: enforced_everywhere(lab, ns, "deny-web"))
    server = listen(web)
    try:
        lab.stop_agent("node-1")
        assert not connects(client, web, timeout=0.5)  # no agent: the rules still hold
        lab.restart_agent("node-1")
        assert not connects(client, web, timeout=0.5)
        with lab.api() as api:
            api.delete("NetworkPolicy", ns, "deny-web")
        eventually(lambda: connects(client, web, timeout=0.5))  # the new agent follows the API
    finally:
        server.close()


def test_lab_without_control_plane_has_no_api(lab: Lab) -> None:
    assert lab.has_control
    with pytest.raises(LabError, match="no control plane"):
        Lab("nonexistent-lab").api()


def meshctl(lab: Lab, *args: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "meshctl"), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **lab.control_addresses()})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_get_networkpolicy_shows_on_how_many_nodes_each_policy_is_enforced(lab: Lab, ns: str) -> None:
    lab.add_pod(ns, "web", node="node-1", labels={"app": "web"})
    with lab.api() as api:
        api.apply(policy(ns))
    eventually(lambda: enforced_everywhere(lab, ns, "deny-web"))
    table = meshctl(lab, "get", "networkpolicy", "-n", ns).splitlines()
    assert table[0].split()[:3] == ["NAME", "POD-SELECTOR", "ENFORCED"]
    assert table[1].split()[:3] == ["deny-web", "app=web", "2/2"]


def admin_policy(ns: str, name: str, baseline: bool = False) -> dict[str, object]:
    """Denies ingress to the test namespace's `app=web` pods from that namespace."""
    spec: dict[str, object] = {
        "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                             "podSelector": {"matchLabels": {"app": "web"}}}},
        "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}]}],
    }
    if not baseline:
        spec["priority"] = 20
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "BaselineAdminNetworkPolicy" if baseline else "AdminNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def admin_enforced_everywhere(lab: Lab, kind: str, name: str) -> bool:
    with lab.api() as api:
        doc = api.get(kind, "", name)
    assert doc is not None
    held = enforcement.read(lab.control_addresses()["TULLE_XDS_ADDRESS"])
    return held.nodes_enforcing(kind, name, doc["metadata"]["resourceVersion"]) == held.agents


@pytest.mark.parametrize("kind", ["AdminNetworkPolicy", "BaselineAdminNetworkPolicy"])
def test_admin_policies_applied_through_the_api_are_enforced_across_nodes_and_shown_enforced(
        lab: Lab, ns: str, kind: str) -> None:
    baseline = kind == "BaselineAdminNetworkPolicy"
    name = "default" if baseline else f"deny-web-{ns}"
    web = lab.add_pod(ns, "web", node="node-1", labels={"app": "web"})
    client = lab.add_pod(ns, "client", node="node-2", labels={"app": "client"})
    server = listen(web)
    try:
        assert connects(client, web)
        with lab.api() as api:
            api.apply(admin_policy(ns, name, baseline))
        eventually(lambda: admin_enforced_everywhere(lab, kind, name))
        assert not connects(client, web)
        table = [line.split() for line in meshctl(lab, "get", kind.lower()).splitlines()]
        assert "ENFORCED" in table[0]
        [row] = [r for r in table[1:] if r[0] == name]
        assert row[table[0].index("ENFORCED")] == "2/2"
        held = meshctl(lab, "proxy-config", "node-2", "adminnetworkpolicies").splitlines()
        assert any(line.split()[:2] == [kind, name] for line in held)
        with lab.api() as api:
            api.delete(kind, "", name)
        eventually(lambda: connects(client, web, timeout=0.5))
    finally:
        server.close()
        with lab.api() as api:
            api.delete(kind, "", name)  # cluster-scoped: never left to the module's other tests


def test_explain_names_the_policy_and_side_that_drop_traffic(lab: Lab, ns: str) -> None:
    lab.add_pod(ns, "web", node="node-1", labels={"app": "web"})
    lab.add_pod(ns, "client", node="node-2", labels={"app": "client"})
    with lab.api() as api:
        api.apply(policy(ns))
    text = meshctl(lab, "netpol", "explain", f"{ns}/client", f"{ns}/web", "80/TCP")
    assert f"{ns}/client -> {ns}/web TCP/80: DENY" in text
    assert f"selected by NetworkPolicy {ns}/deny-web" in text
    assert "decided by the ingress side" in text


def test_lab_down_stops_the_control_plane_and_leaves_no_trace() -> None:
    name = f"td{secrets.token_hex(3)}"
    lab = Lab.up(name, nodes=1, control=True)
    try:
        lab.add_pod("x", "a", labels={"app": "a"})
        control_pid = int(lab.status()["control"]["pid"])
        assert Path(f"/proc/{control_pid}").exists()
    finally:
        assert Lab(name).down() == []
    assert not Path(f"/proc/{control_pid}/cmdline").exists() or b"tulle-control" not in Path(
        f"/proc/{control_pid}/cmdline").read_bytes()
    assert not lab.dir.exists()
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith(f"tl-{name}.")]


def test_proxy_status_and_proxy_config_show_what_each_agent_holds(lab: Lab, ns: str) -> None:
    with lab.api() as api:
        api.ensure_namespace(ns)
        api.apply(policy(ns))
    eventually(lambda: enforced_everywhere(lab, ns, "deny-web"))
    status = meshctl(lab, "proxy-status").splitlines()
    assert status[0].split()[-1] == "NETPOL"
    agents = [line for line in status[1:] if line.startswith("agent~")]
    assert len(agents) == 2 and all(line.split()[-2] == "SYNCED" for line in agents)  # the NETPOL cell
    config = meshctl(lab, "proxy-config", "node-1", "networkpolicies")
    assert any(line.split()[:2] == [ns, "deny-web"] for line in config.splitlines())
