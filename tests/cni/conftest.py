"""Fixtures for tulle-cni tests: a node namespace with its own tulle-agent, and a
way to call the real `tulle-cni` executable as a runtime would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni.wire import call
from tests.kernel import KernelResources

BIN = Path(sys.executable).parent
TULLE_CNI = str(BIN / "tulle-cni")
TULLE_AGENT = str(BIN / "tulle-agent")
REFERENCE_PLUGINS = "/usr/lib/cni"


@dataclass
class CniCall:
    returncode: int
    stdout: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cni(
    command: str,
    conf: Mapping[str, Any] | str,
    container_id: str = "",
    netns: str = "",
    ifname: str = "eth0",
    args: str = "",
    extra_env: Mapping[str, str] | None = None,
) -> CniCall:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": f"{BIN}:{REFERENCE_PLUGINS}",
        **(extra_env or {}),
    }
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    done = subprocess.run([TULLE_CNI], input=stdin.encode(), env=env, capture_output=True, timeout=60)
    return CniCall(done.returncode, done.stdout.decode())


def wait_for_agent(socket_path: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tulle-agent exited with {proc.returncode}")
        try:
            call(str(socket_path), {"op": "status"}, timeout=2)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"tulle-agent did not answer on {socket_path} within {timeout}s")


@dataclass
class Node:
    """A node namespace with a running tulle-agent."""

    kernel: KernelResources
    netns: str
    workdir: Path
    pod_cidr: str
    name: str = "node-a"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def start_agent(self, nodes_file: Path | None = None) -> None:
        argv = [TULLE_AGENT, "--node", self.name, "--socket", str(self.socket),
                "--state-dir", str(self.state_dir), "--pod-cidr", self.pod_cidr]
        if nodes_file is not None:
            argv += ["--nodes-file", str(nodes_file)]
        with open(self.workdir / "agent.log", "ab") as log:
            self.proc = self.kernel.spawn(self.netns, argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for_agent(self.socket, self.proc)

    def kill_agent(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def conf(self, **overrides: Any) -> dict[str, Any]:
        return {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni",
                "agentSocket": str(self.socket), **overrides}

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.netns, "-o", "link", "show"], capture_output=True, text=True, check=True)
        return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]

    def settle(self) -> None:
        """Returns once the agent has done all work queued so far (its datapath
        thread is FIFO: a DEL's deferred veth deletion runs before this call)."""
        if self.proc is not None and self.proc.poll() is None:
            call(str(self.socket), {"op": "status"})

    def host_veths(self) -> list[str]:
        self.settle()
        return [name for name in self.links() if name.startswith("tlv")]

    def attachments(self) -> list[dict[str, Any]]:
        reply = call(str(self.socket), {"op": "attachments"})
        return list(reply["attachments"])


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short, unique path: unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="tlcni-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(kernel: KernelResources, workdir: Path) -> Node:
    n = Node(kernel, kernel.netns("node"), workdir, pod_cidr="10.77.0.0/24")
    n.start_agent()
    return n
