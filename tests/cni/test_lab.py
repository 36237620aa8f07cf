"""The lab, user-facing (`meshctl lab ...`) and as a library (cni.lab.Lab)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.lab import Lab, LabError
from tests.kernel import netns_names

pytestmark = pytest.mark.privileged

MESHCTL = str(Path(sys.executable).parent / "meshctl")


def meshctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([MESHCTL, "lab", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def lab_name() -> Iterator[str]:
    name = f"t{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        Lab(name).down()


def _traces(name: str, pids: list[int]) -> list[str]:
    left = [f"namespace {n}" for n in netns_names() if n.startswith(f"tl-{name}.")]
    left += [f"path {p}" for p in (Path("/run/tulle/lab") / name, Path(f"/run/tulle/lab/{name}.lock")) if p.exists()]
    left += [f"process {pid}" for pid in pids if _alive(pid)]
    return left


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or exited and waiting for its reaper (a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_lab_up_pods_talk_across_nodes_and_lab_down_leaves_no_trace(lab_name: str) -> None:
    meshctl("up", "--nodes", "2", "--name", lab_name)
    meshctl("pod", "add", "shop/cart", "--node", "node-1", "--labels", "app=cart", "--name", lab_name)
    meshctl("pod", "add", "shop/db", "--node", "2", "--name", lab_name)
    state = json.loads(meshctl("status", "-o", "json", "--name", lab_name).stdout)
    pods = {f"{p['namespace']}/{p['name']}": p for p in state["pods"]}
    assert pods["shop/cart"]["node"] == "node-1" and pods["shop/db"]["node"] == "node-2"
    assert pods["shop/cart"]["labels"] == {"app": "cart"}
    db_ip = pods["shop/db"]["ip"]

    assert meshctl("exec", "shop/cart", "--name", lab_name, "--", "busybox", "ping", "-c1", "-W2", db_ip).returncode == 0
    server = subprocess.Popen(
        [MESHCTL, "lab", "exec", "shop/db", "--name", lab_name, "--", sys.executable, "-c",
         "import socket;s=socket.create_server(('0.0.0.0',8080));print('ready',flush=True);"
         "c,_=s.accept();c.sendall(b'db says hi');c.close()"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        reply = meshctl("exec", "shop/cart", "--name", lab_name, "--", sys.executable, "-c",
                        f"import socket;print(socket.create_connection(('{db_ip}',8080),timeout=5).recv(100).decode())")
        assert reply.stdout.strip() == "db says hi"
    finally:
        server.wait(timeout=10)
    pids = [n["agentPid"] for n in state["nodes"]]

    meshctl("down", "--name", lab_name)
    assert _traces(lab_name, pids) == []


def test_lab_down_leaves_no_trace_even_when_its_state_file_is_lost(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=2)
    lab.add_pod("shop", "cart")
    pids = [n.agent_pid for n in lab.nodes()]
    (Path("/run/tulle/lab") / lab_name / "state.json").unlink()
    assert Lab(lab_name).down() == []
    assert _traces(lab_name, pids) == []


def test_pod_del_releases_its_address_and_namespace(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=1)
    pod = lab.add_pod("shop", "cart")
    lab.delete_pod("shop", "cart")
    assert pod.netns not in netns_names()
    again = lab.add_pod("shop", "cart")
    assert again.ip != pod.ip  # freed addresses rotate; the first is not reused at once
    assert [p.key for p in Lab.open(lab_name).pods()] == ["shop/cart"]


def test_each_node_routes_the_other_nodes_pod_cidr_through_the_overlay(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=2)
    first, second = lab.nodes()
    routes = lab.exec_on_node(first, ["ip", "route"], capture_output=True).stdout
    assert f"{second.pod_cidr} via {second.pod_cidr.network_address} dev tulle.vx" in routes


def test_a_host_port_reaches_the_pod_through_its_node_from_another_node(lab_name: str) -> None:
    meshctl("up", "--nodes", "2", "--name", lab_name)
    meshctl("pod", "add", "shop/web", "--node", "1", "--port", "18080:8080", "--name", lab_name)
    meshctl("pod", "add", "shop/client", "--node", "2", "--name", lab_name)
    lab = Lab.open(lab_name)
    web = lab.pod("shop", "web")
    assert [p.to_json() for p in web.ports] == [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]
    server = lab.spawn(web, [sys.executable, "-c",
        "import socket;s=socket.create_server(('0.0.0.0',8080));print('ready',flush=True);"
        "c,_=s.accept();c.sendall(b'via hostPort');c.close()"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        node_ip = lab.nodes()[0].underlay_ip
        reply = lab.exec(lab.pod("shop", "client"), [sys.executable, "-c",
            f"import socket;print(socket.create_connection(('{node_ip}',18080),timeout=5).recv(100).decode())"],
            capture_output=True)
        assert reply.stdout.strip() == "via hostPort", reply.stderr
    finally:
        server.wait(timeout=10)
    meshctl("pod", "del", "shop/web", "--name", lab_name)
    rules = lab.exec_on_node(lab.nodes()[0], ["iptables-save", "-t", "nat"], capture_output=True).stdout
    assert "18080" not in rules


def test_bad_port_is_refused_naming_the_flag(lab_name: str) -> None:
    meshctl("up", "--nodes", "1", "--name", lab_name)
    done = meshctl("pod", "add", "shop/web", "--port", "80", "--name", lab_name, check=False)
    assert done.returncode != 0 and "--port" in done.stderr


def test_pods_spread_over_nodes_when_no_node_is_given(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=2)
    placed = [lab.add_pod("default", f"p{i}").node for i in range(4)]
    assert sorted(placed) == ["node-1", "node-1", "node-2", "node-2"]


def test_library_and_cli_see_each_others_pods(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=1)
    meshctl("pod", "add", "shop/cli-pod", "--name", lab_name)
    lab.add_pod("shop", "lib-pod")
    assert [p.key for p in lab.pods()] == ["shop/cli-pod", "shop/lib-pod"]
    assert [p.key for p in Lab.open(lab_name).pods()] == ["shop/cli-pod", "shop/lib-pod"]


def test_pod_labels_can_be_replaced(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=1)
    lab.add_pod("x", "a", labels={"pod": "a"})
    meshctl("pod", "label", "x/a", "--labels", "pod=b,tier=web", "--name", lab_name)
    assert lab.pod("x", "a").labels == {"pod": "b", "tier": "web"}


def test_namespaces_carry_their_name_label_and_can_be_relabelled(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=1)
    lab.add_pod("x", "a")
    assert lab.namespace_labels("x") == {"kubernetes.io/metadata.name": "x"}
    meshctl("ns", "label", "x", "--labels", "ns=x", "--name", lab_name)
    assert lab.namespace_labels("x") == {"ns": "x", "kubernetes.io/metadata.name": "x"}
    state = json.loads(meshctl("status", "-o", "json", "--name", lab_name).stdout)
    assert state["namespaces"] == {"x": {"ns": "x", "kubernetes.io/metadata.name": "x"}}


def test_the_namespace_name_label_is_immutable(lab_name: str) -> None:
    Lab.up(lab_name, nodes=1)
    done = meshctl("ns", "label", "x", "--labels", "kubernetes.io/metadata.name=y", "--name", lab_name, check=False)
    assert done.returncode != 0 and "immutable" in done.stderr


def test_lab_up_twice_is_refused(lab_name: str) -> None:
    Lab.up(lab_name, nodes=1)
    with pytest.raises(LabError, match="already up"):
        Lab.up(lab_name, nodes=1)


def test_unknown_node_and_duplicate_pod_are_refused(lab_name: str) -> None:
    lab = Lab.up(lab_name, nodes=1)
    with pytest.raises(LabError, match="--node"):
        lab.add_pod("shop", "cart", node="node-9")
    lab.add_pod("shop", "cart")
    with pytest.raises(LabError, match="already exists"):
        lab.add_pod("shop", "cart")


def test_commands_on_a_lab_that_is_not_up_say_so(lab_name: str) -> None:
    done = meshctl("status", "--name", lab_name, check=False)
    assert done.returncode != 0
    assert f"lab {lab_name!r} is not up" in done.stderr
    assert not Path(f"/run/tulle/lab/{lab_name}").exists()


def test_bad_lab_name_is_refused() -> None:
    done = meshctl("up", "--name", "Bad_Name", check=False)
    assert done.returncode != 0 and "--name" in done.stderr


def test_lab_name_comes_from_the_environment(lab_name: str) -> None:
    Lab.up(lab_name, nodes=1)
    done = subprocess.run([MESHCTL, "lab", "status", "-o", "json"], capture_output=True, text=True,
                          env={**os.environ, "TULLE_LAB": lab_name}, timeout=60)
    assert json.loads(done.stdout)["name"] == lab_name
