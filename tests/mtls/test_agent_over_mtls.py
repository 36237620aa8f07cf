"""A tulle-agent on another host joins tulle-control over mTLS with the certificate
`tulle-control issue-cert --kind agent` wrote (`--control HOST:PORT --cert`): config
API, xDS and CA on one port; the certificate of one node starts no agent of another; the
agent renews its certificate before it expires and stays in step."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from control.meshctl import enforcement
from control.meshctl.client import ConfigClient
from tests.cni.conftest import TULLE_AGENT, wait_for_agent
from tests.control.control_process import TULLE_CONTROL
from tests.kernel import KernelResources

pytestmark = pytest.mark.privileged


@dataclass
class Host:
    """A namespace standing for the control host (and, as another host, the agent's)."""

    kernel: KernelResources
    netns: str
    dir: Path
    tls_address: str

    def issue_agent_cert(self, node: str, ttl: str = "720h") -> Path:
        out = self.dir / f"agent-{node}"
        subprocess.run([str(TULLE_CONTROL), "issue-cert", "--kind", "agent", "--name", node, "--out", str(out),
                        "--ttl", ttl, "--state-dir", str(self.dir / "control")],
                       check=True, capture_output=True, timeout=30)
        return out / "cert.pem"

    def agent(self, node: str, cert: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
        home = self.dir / f"node-{node}-{time.monotonic_ns()}"
        home.mkdir()
        log = home / "agent.log"
        argv = [str(TULLE_AGENT), "--node", node, "--socket", str(home / "agent.sock"), "--state-dir", str(home / "state"),
                "--control", self.tls_address, "--cert", str(cert)]
        with log.open("wb") as sink:
            proc = self.kernel.spawn(self.netns, argv, stdout=sink, stderr=subprocess.STDOUT)
        return proc, home / "agent.sock", log


@pytest.fixture
def host(kernel: KernelResources) -> Iterator[Host]:
    base = Path(tempfile.mkdtemp(prefix="tlmtls-"))  # short: unix socket paths are limited
    netns = kernel.netns("ctl")
    log = base / "control.log"
    with log.open("wb") as sink:
        kernel.spawn(netns, [str(TULLE_CONTROL), "--state-dir", str(base / "control"), "--socket",
                             str(base / "control.sock"), "--listen-tls", "127.0.0.1:0", "--log-level", "warning"],
                     stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 20
    address = ""
    while not address and time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("tulle-control mtls:"):
                address = line.split()[2]
        time.sleep(0.05)
    try:
        assert address, log.read_text()
        yield Host(kernel, netns, base, address)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_agent_joins_over_mtls_with_its_node_certificate(host: Host) -> None:
    proc, socket, _ = host.agent("node-a", host.issue_agent_cert("node-a"))
    wait_for_agent(socket, proc, timeout=60)
    client = ConfigClient(f"unix:{host.dir / 'control.sock'}")
    try:
        node = client.get("Node", "", "node-a")
    finally:
        client.close()
    assert node["spec"]["podCIDR"] and node["status"]["addresses"][0]["address"] == "127.0.0.1"


def test_the_certificate_of_one_node_starts_no_agent_of_another(host: Host) -> None:
    proc, _, log = host.agent("node-b", host.issue_agent_cert("node-a"))
    assert proc.wait(timeout=30) != 0
    # refused at its first step, reading Node node-b (which it may not, existing or not)
    assert "agent of node 'node-a' may not read Node node-b" in log.read_text()


def serial(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def test_an_agent_renews_its_short_lived_certificate_and_stays_in_step_after_the_first_expires(host: Host) -> None:
    cert = host.issue_agent_cert("node-r", ttl="20s")
    first = x509.load_pem_x509_certificate(cert.read_bytes())
    proc, socket, log = host.agent("node-r", cert)
    wait_for_agent(socket, proc, timeout=60)
    serials = [first.serial_number]
    deadline = time.monotonic() + 60   # renewals come at ~10 s intervals: half of 20 s
    while len(serials) < 3 or dt.datetime.now(dt.UTC) <= first.not_valid_after_utc:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        if (now := serial(cert)) != serials[-1]:
            serials.append(now)
        time.sleep(0.2)
    assert stat.S_IMODE((cert.parent / "key.pem").stat().st_mode) == 0o600
    renewed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/tulle-system/sa/tulle-agent.node-r"]
    # the first certificate has expired: the agent still takes and ACKs what the control plane pushes
    client = ConfigClient(f"unix:{host.dir / 'control.sock'}")
    try:
        [outcome], _ = client.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "renewed"}}])
    finally:
        client.close()
    version = outcome.object["metadata"]["resourceVersion"]
    while enforcement.read(f"unix:{host.dir / 'control.sock'}").nodes_enforcing("Namespace", "renewed", version) != ["node-r"]:
        assert proc.poll() is None and time.monotonic() < deadline + 20, log.read_text()
        time.sleep(0.2)
