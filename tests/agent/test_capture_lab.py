"""Transparent capture installed by the agent during CNI ADD, for pods marked for
injection (pod annotation or namespace label), shaped by their `traffic.tulle.io/*`
annotations; a malformed one fails the ADD and leaves nothing behind (lab, real kernel)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from cni.capture import TABLE
from cni.lab import Lab, LabError
from cni.lab.topology import LabPod
from cni.wire import call
from proxy.stats_text import parse_stats

pytestmark = pytest.mark.privileged

SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080)); s.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.recv(100); c.sendall(sys.argv[1].encode()); c.close()
""")
# The client speaks first: a PERMISSIVE inbound port tells mTLS from plaintext by the
# first bytes (tls_inspector), so server-first protocols need STRICT or DISABLE, as in Istio.
ASK = ("import socket, sys; c = socket.create_connection((sys.argv[1], 8080), timeout=3); c.sendall(b'who?');"
       " print(c.recv(100).decode())")
INJECT = {"sidecar.tulle.io/inject": "true"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"cp{secrets.token_hex(3)}"
    try:
        yield Lab.up(name, nodes=1, control=True)
    finally:
        assert Lab(name).down() == []


@pytest.fixture
def ns() -> str:
    return f"n{secrets.token_hex(3)}"


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def capture_table(lab: Lab, pod: LabPod) -> str | None:
    done = lab.exec(pod, ["nft", "list", "table", "inet", TABLE], capture_output=True)
    return done.stdout if done.returncode == 0 else None


def sidecar_stat(lab: Lab, pod: LabPod, name: str) -> int:
    done = lab.exec(pod, ["curl", "-s", "127.0.0.1:15000/stats"], capture_output=True)
    return parse_stats(done.stdout).values[name]


def test_an_annotated_pods_tcp_goes_through_its_sidecar_both_ways(lab: Lab, ns: str,
                                                                   servers: list[subprocess.Popen[str]]) -> None:
    meshed = lab.add_pod(ns, "meshed", annotations=INJECT)
    plain = lab.add_pod(ns, "plain")
    for pod in (meshed, plain):
        servers.append(proc := lab.spawn(pod, [sys.executable, "-c", SERVER, pod.name], stdout=subprocess.PIPE, text=True))
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    outbound = lab.exec(meshed, [sys.executable, "-c", ASK, str(plain.ip)], capture_output=True)
    assert outbound.stdout.strip() == "plain", outbound.stderr
    assert sidecar_stat(lab, meshed, "listener.0.0.0.0_15001.downstream_cx_total") == 1  # redirected to 15001
    inbound = lab.exec(plain, [sys.executable, "-c", ASK, str(meshed.ip)], capture_output=True)
    assert inbound.stdout.strip() == "meshed", inbound.stderr
    assert sidecar_stat(lab, meshed, "listener.0.0.0.0_15006.downstream_cx_total") == 1  # redirected to 15006
    assert capture_table(lab, plain) is None  # not meshed: not captured


def test_a_namespace_label_meshes_its_pods_unless_a_pod_opts_out(lab: Lab, ns: str) -> None:
    lab.set_namespace_labels(ns, {"tulle-injection": "enabled"})
    meshed = lab.add_pod(ns, "meshed")
    opted_out = lab.add_pod(ns, "opted-out", annotations={"sidecar.tulle.io/inject": "false"})
    assert capture_table(lab, meshed) is not None
    assert capture_table(lab, opted_out) is None


def test_traffic_annotations_shape_the_capture(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "app", annotations={**INJECT, "traffic.tulle.io/excludeOutboundPorts": "5432",
                                              "traffic.tulle.io/excludeOutboundIPRanges": "10.99.0.0/16"})
    table = capture_table(lab, pod)
    assert table is not None and "5432" in table and "10.99.0.0/16" in table


def test_a_malformed_traffic_annotation_fails_the_add_naming_it_and_leaves_nothing(lab: Lab, ns: str) -> None:
    def lab_netns() -> set[str]:   # this lab's only: other labs may come and go meanwhile
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        return {name for name in names if name.startswith(f"tl-{lab.name}.")}

    netns_before = lab_netns()
    with pytest.raises(LabError, match=r"traffic\.tulle\.io/excludeOutboundPorts: 'http' is not a port"):
        lab.add_pod(ns, "bad", annotations={**INJECT, "traffic.tulle.io/excludeOutboundPorts": "80,http"})
    assert lab_netns() <= netns_before
    node = lab.nodes()[0]
    attachments = call(str(lab.dir / node.name / "agent.sock"), {"op": "attachments"}, timeout=5)["attachments"]
    assert not any(a["podName"] == "bad" and a["podNamespace"] == ns for a in attachments), json.dumps(attachments)
    assert all(p.name != "bad" for p in lab.pods())
