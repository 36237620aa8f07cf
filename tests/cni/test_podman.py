"""podman, with its CNI backend, as a real caller of tulle-cni.

podman runs inside a network namespace made for the test (the node), next to
that node's tulle-agent, with private storage, run and config dirs, and a
busybox rootfs (no image pull)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cni.conftest import BIN, REFERENCE_PLUGINS, Node
from tests.kernel import KernelResources

pytestmark = pytest.mark.privileged

BUSYBOX_TOOLS = ("sh", "sleep", "ping", "ip", "cat", "true")


@dataclass
class Podman:
    node: Node
    home: Path
    network: str

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["nsenter", f"--net=/run/netns/{self.node.netns}", "podman",
                "--root", str(self.home / "root"), "--runroot", str(self.home / "runroot"), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(self.home / "containers.conf")})
        if check:
            assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
        return done

    def run(self, name: str, *command: str) -> None:
        self("run", "-d", "--name", name, "--network", self.network, "--stop-signal", "KILL",
             "--rootfs", str(self.home / "rootfs"), *command)

    def address(self, name: str) -> str:
        out = self("exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        return out.split("inet ")[1].split("/")[0]


@pytest.fixture
def podman(node: Node, kernel: KernelResources) -> Iterator[Podman]:
    home = node.workdir / "podman"
    rootfs = home / "rootfs"
    for sub in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / sub).mkdir(parents=True)
    shutil.copy("/usr/bin/busybox", rootfs / "bin" / "busybox")
    for tool in BUSYBOX_TOOLS:
        (rootfs / "bin" / tool).symlink_to("busybox")
    network = f"tl{secrets.token_hex(4)}"
    (home / "net.d").mkdir()
    (home / "net.d" / f"{network}.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": network,
        "plugins": [{"type": "tulle-cni", "agentSocket": str(node.socket), "ipam": {"subnet": "10.66.0.0/24"}}],
    }))
    (home / "containers.conf").write_text(f"""
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{home}/events.log"
tmp_dir = "{home}/tmp"
[network]
network_backend = "cni"
network_config_dir = "{home}/net.d"
cni_plugin_dirs = ["{BIN}", "{REFERENCE_PLUGINS}"]
""")
    podman_cli = Podman(node, home, network)
    try:
        yield podman_cli
    finally:
        podman_cli("rm", "--all", "--force", "--time", "0", check=False)
        subprocess.run(["umount", "-R", str(home / "root")], capture_output=True)
        subprocess.run(["umount", "-R", str(home / "runroot")], capture_output=True)


def _allocated(node: Node) -> dict[str, str]:
    return {a["containerID"]: a["address"] for a in node.attachments()}


def _cached_results(network: str) -> list[Path]:
    return sorted(Path("/var/lib/cni/results").glob(f"{network}-*"))


def test_two_containers_get_addresses_from_tulle_and_reach_each_other(podman: Podman, node: Node) -> None:
    podman.run("a", "sleep", "300")
    podman.run("b", "sleep", "300")
    a, b = podman.address("a"), podman.address("b")
    assert sorted(_allocated(node).values()) == sorted([a, b])
    assert all(address.startswith("10.66.0.") for address in (a, b))
    assert podman("exec", "a", "ping", "-c1", "-W2", b).returncode == 0
    assert podman("exec", "b", "ping", "-c1", "-W2", a).returncode == 0


def test_stopping_containers_releases_their_addresses(podman: Podman, node: Node) -> None:
    podman.run("a", "sleep", "300")
    podman.run("b", "sleep", "300")
    podman("stop", "--time", "0", "a", "b")
    assert _allocated(node) == {}
    assert node.host_veths() == []
    podman("rm", "a", "b")  # podman DELs again on removal: tolerated
    assert _cached_results(podman.network) == []


def test_a_container_that_exits_on_its_own_releases_its_address(podman: Podman, node: Node) -> None:
    podman.run("short", "sleep", "1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _allocated(node):
        time.sleep(0.2)
    assert _allocated(node) == {}
    podman("rm", "short")
    assert node.host_veths() == []
