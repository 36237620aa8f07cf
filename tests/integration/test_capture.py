"""Transparent capture in a real pod namespace: outbound to 15001, inbound to 15006,
the original destination recovered, and the exclusions honoured."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cni.capture import CaptureConfig, CaptureConfigError, capture_ruleset
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged

POD_IP, REMOTE_IP = "10.98.0.2", "10.98.0.1"

# Stands in for the sidecar: answers with the port it accepted on and the original destination.
SIDECAR = textwrap.dedent("""
    import selectors, socket, sys
    from proxy.original_destination import original_destination
    sel = selectors.DefaultSelector()
    for port in (15001, 15006):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(16); sel.register(s, selectors.EVENT_READ, port)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            host, port = original_destination(conn)
            conn.sendall(f"sidecar:{key.data} {host}:{port}".encode()); conn.close()
""")

REMOTE = textwrap.dedent("""
    import selectors, socket, sys
    sel = selectors.DefaultSelector()
    for port in (80, 5432):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((sys.argv[1], port)); s.listen(16); sel.register(s, selectors.EVENT_READ, port)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept(); conn.sendall(f"remote:{key.data}".encode()); conn.close()
""")

CLIENT = textwrap.dedent("""
    import encodings.idna, os, socket, sys  # idna first: after setuid, /root's stdlib is unreadable
    if sys.argv[3] != "root":
        os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[3]))
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print(c.recv(200).decode())
""")


@pytest.fixture
def pod(kernel: KernelResources) -> tuple[KernelResources, str, str]:
    pod_ns, remote_ns = kernel.netns("pod"), kernel.netns("remote")
    pod_end, remote_end = kernel.veth(pod_ns, remote_ns)
    ip("addr", "add", f"{POD_IP}/24", "dev", pod_end, netns=pod_ns)
    ip("addr", "add", f"{REMOTE_IP}/24", "dev", remote_end, netns=remote_ns)
    for ns, script, args in ((pod_ns, SIDECAR, []), (remote_ns, REMOTE, [REMOTE_IP])):
        proc = kernel.spawn(ns, [sys.executable, "-c", script, *args], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return kernel, pod_ns, remote_ns


def install(kernel: KernelResources, ns: str, config: CaptureConfig) -> None:
    done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"],
                          input=json.dumps(capture_ruleset(config)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kernel.nft_table(ns, "inet", "tulle_capture")


def connect(kernel: KernelResources, ns: str, host: str, port: int, uid: str = "root") -> str:
    done = kernel.exec(ns, [sys.executable, "-c", CLIENT, host, str(port), uid])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_outbound_tcp_reaches_the_sidecar_with_its_original_destination(pod) -> None:
    kernel, pod_ns, _ = pod
    install(kernel, pod_ns, CaptureConfig())
    assert connect(kernel, pod_ns, REMOTE_IP, 80) == f"sidecar:15001 {REMOTE_IP}:80"


def test_inbound_tcp_reaches_the_sidecar_with_its_original_destination(pod) -> None:
    kernel, pod_ns, remote_ns = pod
    install(kernel, pod_ns, CaptureConfig())
    assert connect(kernel, remote_ns, POD_IP, 8080) == f"sidecar:15006 {POD_IP}:8080"


def test_the_sidecars_own_traffic_is_not_captured(pod) -> None:
    kernel, pod_ns, _ = pod
    install(kernel, pod_ns, CaptureConfig())
    assert connect(kernel, pod_ns, REMOTE_IP, 80, uid="1337") == "remote:80"


def test_excluded_outbound_ports_and_ranges_go_out_directly(pod) -> None:
    kernel, pod_ns, _ = pod
    install(kernel, pod_ns, CaptureConfig.from_annotations({
        "traffic.tulle.io/excludeOutboundPorts": "5432",
        "traffic.tulle.io/excludeOutboundIPRanges": "192.0.2.0/24",
    }))
    assert connect(kernel, pod_ns, REMOTE_IP, 5432) == "remote:5432"
    assert connect(kernel, pod_ns, REMOTE_IP, 80) == f"sidecar:15001 {REMOTE_IP}:80"


def test_only_included_inbound_ports_are_captured(pod) -> None:
    kernel, pod_ns, remote_ns = pod
    install(kernel, pod_ns, CaptureConfig.from_annotations({"traffic.tulle.io/includeInboundPorts": "8080"}))
    assert connect(kernel, remote_ns, POD_IP, 8080) == f"sidecar:15006 {POD_IP}:8080"
    # 9090 is not captured and nothing listens there: refused, not redirected.
    refused = kernel.exec(remote_ns, [sys.executable, "-c", CLIENT, POD_IP, "9090", "root"])
    assert "ConnectionRefusedError" in refused.stderr


def test_installing_twice_replaces_the_table_instead_of_duplicating_rules(pod) -> None:
    kernel, pod_ns, _ = pod
    install(kernel, pod_ns, CaptureConfig())
    install(kernel, pod_ns, CaptureConfig())
    listing = kernel.exec(pod_ns, ["nft", "list", "table", "inet", "tulle_capture"]).stdout
    assert listing.count("redirect to :15001") == 1


@pytest.mark.parametrize(("annotation", "value"), [
    ("excludeOutboundPorts", "80,http"),
    ("excludeInboundPorts", "70000"),
    ("excludeOutboundIPRanges", "10.0.0.0/33"),
])
def test_a_malformed_annotation_is_an_error_naming_it(annotation: str, value: str) -> None:
    with pytest.raises(CaptureConfigError, match=f"traffic.tulle.io/{annotation}"):
        CaptureConfig.from_annotations({f"traffic.tulle.io/{annotation}": value})
