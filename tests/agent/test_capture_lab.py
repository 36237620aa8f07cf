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

pytestmark = pytest.mark.privileged

# Listens where the sidecar would (15001) and reports the original destination of what it accepts.
ORIGINAL_DST = textwrap.dedent("""
    import socket, struct
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 15001)); s.listen(8)
    print("ready", flush=True)
    c, _ = s.accept()
    raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    port, addr = struct.unpack("!2xH4s8x", raw)
    print(f"{socket.inet_ntoa(addr)}:{port}", flush=True)
""")
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


def capture_table(lab: Lab, pod: LabPod) -> str | None:
    done = lab.exec(pod, ["nft", "list", "table", "inet", TABLE], capture_output=True)
    return done.stdout if done.returncode == 0 else None


def test_an_annotated_pod_has_its_outbound_tcp_redirected_to_the_sidecar_port(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "app", annotations=INJECT)
    other = lab.add_pod(ns, "other")
    listener = lab.spawn(pod, [sys.executable, "-c", ORIGINAL_DST], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        connect = f"import socket; socket.create_connection(({str(other.ip)!r}, 8080), timeout=3)"
        assert lab.exec(pod, [sys.executable, "-c", connect], capture_output=True).returncode == 0
        assert listener.stdout.readline().strip() == f"{other.ip}:8080"
    finally:
        listener.kill()
        listener.wait()
    assert capture_table(lab, other) is None  # not meshed: not captured


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
    netns_before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    with pytest.raises(LabError, match=r"traffic\.tulle\.io/excludeOutboundPorts: 'http' is not a port"):
        lab.add_pod(ns, "bad", annotations={**INJECT, "traffic.tulle.io/excludeOutboundPorts": "80,http"})
    netns_after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert netns_after <= netns_before
    node = lab.nodes()[0]
    attachments = call(str(lab.dir / node.name / "agent.sock"), {"op": "attachments"}, timeout=5)["attachments"]
    assert not any(a["podName"] == "bad" and a["podNamespace"] == ns for a in attachments), json.dumps(attachments)
    assert all(p.name != "bad" for p in lab.pods())
