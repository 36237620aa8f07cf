"""Throwaway kernel objects for privileged tests: network namespaces, veth pairs,
bridges, nftables tables and processes.

Rules:
- Every object gets a unique name (a random token), so tests, parallel runs and a
  developer's own namespaces never collide.
- Everything created through a `KernelResources` is removed by `cleanup()`, which
  the `kernel` fixture calls after the test whatever its outcome, in reverse order
  of creation: processes first (they may hold a namespace busy), then nft tables,
  links, and namespaces last.
- Processes are stopped by the PID we started, never by name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def netns_names() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def _token() -> str:
    return secrets.token_hex(3)


@dataclass
class KernelResources:
    """What one test created in the kernel, and how to remove it."""

    namespaces: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)
    nft_tables: list[tuple[str | None, str, str]] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def netns(self, prefix: str = "t") -> str:
        name = f"tl-{prefix}-{_token()}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", netns=name)
        return name

    def veth(self, ns_a: str | None, ns_b: str | None) -> tuple[str, str]:
        """A veth pair with one end in each namespace (None: the host's); both up."""
        tok = _token()
        a, b = f"va{tok}", f"vb{tok}"
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        for end, ns in ((a, ns_a), (b, ns_b)):
            if ns is None:
                self.host_links.append(end)
            else:
                ip("link", "set", end, "netns", ns)
            ip("link", "set", end, "up", netns=ns)
        return a, b

    def bridge(self, ns: str | None) -> str:
        name = f"br{_token()}"
        ip("link", "add", name, "type", "bridge", netns=ns)
        if ns is None:
            self.host_links.append(name)
        ip("link", "set", name, "up", netns=ns)
        return name

    def nft_table(self, ns: str | None, family: str, name: str) -> None:
        """Records a table the test creates, so that it is deleted afterwards."""
        self.nft_tables.append((ns, family, name))

    def spawn(self, ns: str | None, argv: Sequence[str], **popen: object) -> subprocess.Popen[bytes]:
        """Starts a process (in a namespace if given) in its own process group."""
        cmd = [*(["ip", "netns", "exec", ns] if ns else []), *argv]
        proc: subprocess.Popen[bytes] = subprocess.Popen(cmd, start_new_session=True, **popen)  # type: ignore[call-overload]
        self.processes.append(proc)
        return proc

    def exec(self, ns: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
        )

    def cleanup(self) -> list[str]:
        """Removes everything; returns what could not be removed (for the report)."""
        problems: list[str] = []
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"process {proc.pid} did not exit")
        for ns, family, name in reversed(self.nft_tables):
            prefix = ["ip", "netns", "exec", ns] if ns else []
            subprocess.run([*prefix, "nft", "delete", "table", family, name], capture_output=True)
        for link in reversed(self.host_links):
            ip("link", "del", link, check=False)
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
            if ns in netns_names():
                problems.append(f"namespace {ns} still exists")
        self.processes.clear()
        self.nft_tables.clear()
        self.host_links.clear()
        self.namespaces.clear()
        return problems


@pytest.fixture
def kernel() -> Iterator[KernelResources]:
    resources = KernelResources()
    try:
        yield resources
    finally:
        problems = resources.cleanup()
        if problems:
            pytest.fail("kernel cleanup left: " + "; ".join(problems))
