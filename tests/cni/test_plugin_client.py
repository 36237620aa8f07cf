"""The `tulle-cni` executable on its own: what it answers without an agent, and
how it passes the agent's answer through. No root needed."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cni.conftest import run_cni

CONF = {"cniVersion": "1.0.0", "name": "tnet", "type": "tulle-cni"}


@pytest.fixture
def agent_socket(workdir: Path) -> Iterator[tuple[Path, list[dict[str, object]], list[bytes]]]:
    """A unix socket answering each connection with the next queued reply."""
    path = workdir / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    received: list[dict[str, object]] = []
    replies: list[bytes] = []

    stop = threading.Event()
    server.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                received.append(json.loads(data))
                conn.sendall(replies.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, received, replies
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_version_lists_supported_versions_without_an_agent() -> None:
    out = run_cni("VERSION", "")
    assert out.returncode == 0
    assert out.json == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_malformed_config_is_a_decode_failure_without_an_agent() -> None:
    out = run_cni("ADD", "{not json", "c1", "/run/netns/x")
    assert out.returncode == 1 and out.json["code"] == 6


def test_no_agent_means_try_again_later_in_the_callers_version(workdir: Path) -> None:
    out = run_cni("DEL", {**CONF, "agentSocket": str(workdir / "none.sock")}, "c1", "")
    assert out.json == {"cniVersion": "1.0.0", "code": 11, "msg": out.json["msg"]}
    assert str(workdir / "none.sock") in out.json["msg"]


def test_status_without_an_agent_is_not_available(workdir: Path) -> None:
    out = run_cni("STATUS", {**CONF, "agentSocket": str(workdir / "none.sock")})
    assert out.json["code"] == 50


def test_request_carries_the_cni_environment_and_stdin_verbatim(
    agent_socket: tuple[Path, list[dict[str, object]], list[bytes]],
) -> None:
    path, received, replies = agent_socket
    replies.append(json.dumps({"exit": 0, "stdout": '{"cniVersion": "1.0.0"}'}).encode())
    conf = json.dumps({**CONF, "agentSocket": str(path)})
    out = run_cni("ADD", conf, "c1", "/run/netns/x", args="IP=10.0.0.5")
    assert (out.returncode, out.stdout) == (0, '{"cniVersion": "1.0.0"}')
    request = received[0]
    assert request["op"] == "cni" and request["stdin"] == conf
    env = request["env"]
    assert isinstance(env, dict)
    assert {k: env[k] for k in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS")} == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0", "CNI_ARGS": "IP=10.0.0.5",
    }
    assert "PATH" not in env


def test_agent_exit_status_and_error_pass_through(agent_socket: tuple[Path, list[dict[str, object]], list[bytes]]) -> None:
    path, _, replies = agent_socket
    error = json.dumps({"cniVersion": "1.0.0", "code": 102, "msg": "no free address left in 10.0.0.0/24"})
    replies.append(json.dumps({"exit": 1, "stdout": error}).encode())
    out = run_cni("ADD", {**CONF, "agentSocket": str(path)}, "c1", "/run/netns/x")
    assert (out.returncode, out.stdout) == (1, error)


def test_an_unexpected_agent_reply_is_an_io_failure(agent_socket: tuple[Path, list[dict[str, object]], list[bytes]]) -> None:
    path, _, replies = agent_socket
    replies.append(b'{"error": "unknown op"}')
    out = run_cni("ADD", {**CONF, "agentSocket": str(path)}, "c1", "/run/netns/x")
    assert out.json["code"] == 5
