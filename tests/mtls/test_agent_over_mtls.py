"""A tulle-agent on another host joins tulle-control over mTLS with the certificate
`tulle-control issue-cert --kind agent` wrote (`--control HOST:PORT --cert`): config
API, xDS and CA on one port; the certificate of one node starts no agent of another."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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

    def issue_agent_cert(self, node: str) -> Path:
        out = self.dir / f"agent-{node}"
        subprocess.run([str(TULLE_CONTROL), "issue-cert", "--kind", "agent", "--name", node, "--out", str(out),
                        "--state-dir", str(self.dir / "control")], check=True, capture_output=True, timeout=30)
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
