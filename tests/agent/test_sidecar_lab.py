"""A meshed lab pod's lifecycle: capture installed at ADD, the sidecar (uid 1337, bootstrap
generated for the pod, ADS to the lab's tulle-control) ready before the app starts,
/quitquitquit when the app exits, `pod del` and `lab down` stopping both by PID.

The sidecar binary here is Envoy, the real peer, which takes its certificate over the node
agent's per-pod SDS socket (tulle-proxy sidecars make their own key: tests/e2e); the
lifecycle and the bootstrap are the same for both."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cni.capture import TABLE
from cni.lab import Lab
from cni.lab.sidecar import PROXY_UID, read_events, sidecar_bootstrap

pytestmark = pytest.mark.privileged

ENVOY = str(Path(sys.executable).parent / "envoy")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"sc{secrets.token_hex(3)}"
    try:
        yield Lab.up(name, nodes=1, control=True)
    finally:
        assert Lab(name).down() == []


@pytest.fixture
def ns() -> str:
    return f"n{secrets.token_hex(3)}"


def eventually(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def events(lab: Lab, ns: str, name: str) -> list[dict]:
    return read_events(lab.dir / "pods" / f"{ns}.{name}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def uid_of(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


def test_the_sidecar_runs_as_1337_and_is_ready_before_the_app_starts(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "web", inject=True, proxy=[ENVOY], app=["sleep", "300"])
    order = [e["event"] for e in events(lab, ns, "web")]
    assert order == ["proxy-started", "proxy-ready", "app-started"]
    proxy_pid = events(lab, ns, "web")[0]["pid"]
    assert uid_of(proxy_pid) == PROXY_UID
    assert lab.exec(pod, ["nft", "list", "table", "inet", TABLE], capture_output=True).returncode == 0
    lab.delete_pod(ns, "web")


def test_the_app_exiting_tells_the_sidecar_to_quit(lab: Lab, ns: str) -> None:
    lab.add_pod(ns, "job", inject=True, proxy=[ENVOY], app=["sleep", "0.5"])
    eventually(lambda: "proxy-exited" in [e["event"] for e in events(lab, ns, "job")])
    after = [e for e in events(lab, ns, "job")]
    assert [e["event"] for e in after] == ["proxy-started", "proxy-ready", "app-started", "app-exited",
                                           "proxy-quit", "proxy-exited"]
    assert after[-1]["status"] == 0  # it quit on /quitquitquit, not on a signal
    lab.delete_pod(ns, "job")


def test_pod_del_stops_the_app_and_the_sidecar(lab: Lab, ns: str) -> None:
    pod = lab.add_pod(ns, "web", inject=True, proxy=[ENVOY], app=["sleep", "300"])
    started = {e["event"]: e["pid"] for e in events(lab, ns, "web") if "pid" in e}
    assert all(alive(pid) for pid in (pod.supervisor_pid, *started.values()))
    lab.delete_pod(ns, "web")
    assert not any(alive(pid) for pid in (pod.supervisor_pid, *started.values()))
    assert not (lab.dir / "pods" / f"{ns}.web").exists()


def test_a_sidecar_that_never_gets_ready_fails_the_pod_and_leaves_nothing(lab: Lab, ns: str) -> None:
    with pytest.raises(Exception, match="before ready"):
        lab.add_pod(ns, "broken", inject=True, proxy=["false"], app=["sleep", "300"])
    assert all(p.name != "broken" for p in lab.pods())
    assert not (lab.dir / "pods" / f"{ns}.broken").exists()


def test_the_generated_bootstrap_names_the_pod_and_passes_envoys_validation(tmp_path: Path) -> None:
    bootstrap = sidecar_bootstrap("10.244.1.7", "web", "shop", "172.30.0.254", 15010, tmp_path / "sds.sock")
    assert bootstrap["node"]["id"] == "sidecar~10.244.1.7~web.shop~shop.svc.cluster.local"
    assert bootstrap["node"]["metadata"] == {"NAME": "web", "NAMESPACE": "shop", "INTERCEPTION_MODE": "REDIRECT"}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    done = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_lab_down_stops_every_pods_processes() -> None:
    name = f"sd{secrets.token_hex(3)}"
    lab = Lab.up(name, nodes=1, control=True)
    try:
        pod = lab.add_pod("default", "web", inject=True, proxy=[ENVOY], app=["sleep", "300"])
        pids = [pod.supervisor_pid, *(e["pid"] for e in read_events(lab.dir / "pods" / "default.web") if "pid" in e)]
        assert all(alive(pid) for pid in pids)
    finally:
        assert Lab(name).down() == []
    assert not any(alive(pid) for pid in pids)
    assert not list(Path("/etc/netns").glob(f"tl-{name}.*"))


def test_meshctl_lab_pod_add_inject_starts_the_app_after_its_sidecar(lab: Lab, ns: str) -> None:
    meshctl = str(Path(sys.executable).parent / "meshctl")
    done = subprocess.run([meshctl, "lab", "pod", "add", f"{ns}/cli", "--lab", lab.name, "--inject", "--proxy", ENVOY,
                           "--app", "sleep 300", "--annotation", "traffic.tulle.io/excludeOutboundPorts=5432"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [e["event"] for e in events(lab, ns, "cli")] == ["proxy-started", "proxy-ready", "app-started"]
    table = lab.exec(lab.pod(ns, "cli"), ["nft", "list", "table", "inet", TABLE], capture_output=True).stdout
    assert "5432" in table
    done = subprocess.run([meshctl, "lab", "pod", "del", f"{ns}/cli", "--lab", lab.name], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


# Asks a pod's SDS socket for the workload certificate; prints its SPIFFE ID or the failure.
FETCH_SECRET = """
import sys, grpc
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
try:
    with grpc.insecure_channel("unix:" + sys.argv[1]) as channel:
        stream = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(
            iter([discovery_pb2.DiscoveryRequest(resource_names=["default"])]), timeout=5)
        reply = next(stream)
    secret = secret_pb2.Secret()
    reply.resources[0].Unpack(secret)
    leaf = x509.load_pem_x509_certificate(secret.tls_certificate.certificate_chain.inline_bytes)
    print(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
          .get_values_for_type(x509.UniformResourceIdentifier)[0])
except grpc.RpcError as error:
    print("refused:", error.code().name)
"""


def test_a_pods_sds_socket_serves_only_processes_in_that_pod(lab: Lab, ns: str) -> None:
    own = lab.add_pod(ns, "own", service_account="owner")
    other = lab.add_pod(ns, "other", service_account="intruder")
    socket = lab.dir / own.node / "sds" / ns / "own" / "socket"
    eventually(socket.exists)
    from_own = lab.exec(own, [sys.executable, "-c", FETCH_SECRET, str(socket)], capture_output=True)
    assert from_own.stdout.strip() == f"spiffe://cluster.local/ns/{ns}/sa/owner", from_own.stderr
    from_other = lab.exec(other, [sys.executable, "-c", FETCH_SECRET, str(socket)], capture_output=True)
    assert from_other.stdout.startswith("refused:"), from_other.stdout + from_other.stderr
