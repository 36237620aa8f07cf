"""tulle-agent, the process: its socket and its command line."""

from __future__ import annotations

import signal
import subprocess

import pytest

from cni.wire import call
from tests.cni.conftest import TULLE_AGENT, Node

pytestmark = pytest.mark.privileged


def test_a_second_agent_on_a_live_socket_is_refused(node: Node) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", node.netns, TULLE_AGENT, "--node", "other", "--socket", str(node.socket),
         "--state-dir", str(node.workdir / "other")],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode != 0
    assert f"another tulle-agent is serving {node.socket}" in done.stderr


def test_sigterm_stops_the_agent_and_removes_its_socket(node: Node) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=10) == 0
    assert not node.socket.exists()


def test_a_stale_socket_is_replaced_on_start(node: Node) -> None:
    node.kill_agent()
    assert node.socket.exists()  # SIGKILL leaves the file behind
    node.start_agent()
    assert call(str(node.socket), {"op": "status"})["node"] == "node-a"


def test_bad_pod_cidr_is_refused_naming_the_flag(node: Node) -> None:
    done = subprocess.run([TULLE_AGENT, "--node", "x", "--pod-cidr", "10.0.0.1/33"], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "--pod-cidr" in done.stderr


def test_unknown_operation_is_answered_with_an_error(node: Node) -> None:
    assert "unknown op" in call(str(node.socket), {"op": "reboot"})["error"]


def test_status_reports_node_cidr_and_attachment_count(node: Node) -> None:
    assert call(str(node.socket), {"op": "status"}) == {
        "node": "node-a", "podCidr": "10.77.0.0/24", "peers": [], "attachments": 0,
    }
