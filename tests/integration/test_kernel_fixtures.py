"""The kernel fixtures themselves: they build real topologies and always clean up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.kernel import KernelResources, ip, netns_names

pytestmark = pytest.mark.privileged

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.2", 7000)); s.listen(1); s.settimeout(10)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(10)
c.sendall(c.recv(100).upper()); c.close()
"""

CLIENT = """
import socket
c = socket.create_connection(("10.99.0.2", 7000), timeout=5)
c.sendall(b"hello over the bridge"); print(c.recv(100).decode())
"""


def test_two_namespaces_on_a_bridge_exchange_a_tcp_message(kernel: KernelResources) -> None:
    switch, a, b = kernel.netns("sw"), kernel.netns("a"), kernel.netns("b")
    bridge = kernel.bridge(switch)
    for ns, addr in ((a, "10.99.0.1/24"), (b, "10.99.0.2/24")):
        pod_end, switch_end = kernel.veth(ns, switch)
        ip("link", "set", switch_end, "master", bridge, netns=switch)
        ip("addr", "add", addr, "dev", pod_end, netns=ns)

    server = kernel.spawn(b, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == b"listening"
    reply = kernel.exec(a, [sys.executable, "-c", CLIENT])

    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.strip() == "HELLO OVER THE BRIDGE"
    assert server.wait(timeout=10) == 0


LEAKY_TEST = textwrap.dedent(
    """
    import json, subprocess, sys
    from tests.kernel import ip

    def test_leaks_then_fails(kernel):
        ns = kernel.netns("leak")
        host_end, ns_end = kernel.veth(None, ns)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "table", "inet", "leak"], check=True)
        kernel.nft_table(ns, "inet", "leak")
        proc = kernel.spawn(ns, [sys.executable, "-c", "import time; time.sleep(600)"])
        with open({record!r}, "w") as f:
            json.dump({{"netns": ns, "link": host_end, "pid": proc.pid}}, f)
        assert False, "this test fails on purpose"
    """
)


def test_a_failing_test_leaks_nothing(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "created.json"
    pytester.makeconftest("pytest_plugins = ['tests.kernel']")
    pytester.makepyfile(test_leaky=LEAKY_TEST.format(record=str(record)))
    root = Path(__file__).resolve().parents[2]
    env_path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", env_path)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    created = json.loads(record.read_text())
    assert created["netns"] not in netns_names()
    assert ip("link", "show", created["link"], check=False) == ""
    assert not Path(f"/proc/{created['pid']}").exists()
