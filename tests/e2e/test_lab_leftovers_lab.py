"""A lab leaves nothing behind, even when a `meshctl lab pod add --inject` is interrupted
or killed half-way (its sidecar already started), and a bad lab name is an error, not a
traceback."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.lab import Lab
from cni.lab.sidecar import read_events
from tests.e2e.mesh import lab_processes, leftovers

MESHCTL = str(Path(sys.executable).parent / "meshctl")


@pytest.fixture
def lab() -> Iterator[Lab]:
    name = f"lo{secrets.token_hex(3)}"
    try:
        yield Lab.up(name, nodes=1, control=True)
    finally:
        Lab(name).down()


@pytest.fixture
def never_ready_proxy() -> Iterator[str]:
    """A sidecar binary that starts and never becomes ready: a `pod add` waiting for it is
    still under way whenever the test interrupts it (a real tulle-proxy can be ready, and
    the add done, before the test's signal lands). World-readable: sidecars run as 1337."""
    path = Path(tempfile.mkdtemp(prefix="tulle-never-ready-"))
    script = path / "proxy"
    script.write_text("#!/bin/sh\nexec sleep 300\n")
    path.chmod(0o755)
    script.chmod(0o755)
    try:
        yield str(script)
    finally:
        shutil.rmtree(path)


def start_pod_add(lab: Lab, proxy: str = "") -> subprocess.Popen[str]:
    """`meshctl lab pod add --inject`, returned once the pod's sidecar has started."""
    adding = subprocess.Popen([MESHCTL, "lab", "pod", "add", "shop/web", "--lab", lab.name, "--inject",
                               "--app", "sleep 300", *(["--proxy", proxy] if proxy else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(e["event"] == "proxy-started" for e in read_events(lab.dir / "pods" / "shop.web")):
        assert adding.poll() is None and time.monotonic() < deadline, adding.communicate()
        time.sleep(0.01)
    return adding


@pytest.mark.privileged
def test_an_interrupted_pod_add_stops_the_sidecar_it_started_and_leaves_no_pod(lab: Lab,
                                                                              never_ready_proxy: str) -> None:
    adding = start_pod_add(lab, never_ready_proxy)
    adding.send_signal(signal.SIGINT)
    adding.communicate(timeout=60)
    assert adding.returncode != 0
    assert lab_processes(lab.dir / "pods") == []
    assert lab.pods() == []
    assert not [n for n in Path("/run/netns").iterdir() if n.name.startswith(f"tl-{lab.name}.p-")]
    assert not list(Path("/etc/netns").glob(f"tl-{lab.name}.*"))


@pytest.mark.privileged
def test_lab_down_stops_the_sidecar_of_a_pod_add_killed_half_way(lab: Lab) -> None:
    adding = start_pod_add(lab)
    adding.kill()
    adding.communicate(timeout=10)
    assert lab_processes(lab.dir / "pods") != []  # the supervisor lives in its own session: it outlived meshctl
    assert Lab(lab.name).down() == []
    assert leftovers(lab.name) == []


def test_lab_down_with_a_bad_name_says_what_is_wrong_without_a_traceback() -> None:
    done = subprocess.run([MESHCTL, "lab", "down", "--name", "bad.name"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--name: 'bad.name' must be" in done.stderr and "Traceback" not in done.stderr
