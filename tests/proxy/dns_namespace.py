"""A DNS test's probe (a module that runs a DNS server on 127.0.0.1:53, upstreams and a proxy,
and prints what it saw as one JSON line) run in a network namespace of its own, whose
resolv.conf names that server."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from tests.kernel import KernelResources


def run_probe(module: str, *args: str, hosts: str = "", timeout: float = 120) -> dict[str, Any]:
    """Run `python -m module args...` in a namespace of its own, whose /etc/resolv.conf names
    127.0.0.1 (one try, 1 s) and whose /etc/hosts is `hosts` if given: the JSON object of its
    last output line. Everything made for it is removed, also on failure."""
    kernel = KernelResources()
    ns = kernel.netns("dns")
    etc = Path("/etc/netns") / ns   # `ip netns exec` mounts these over /etc/resolv.conf, /etc/hosts
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        if hosts:
            (etc / "hosts").write_text(hosts)
        done = kernel.exec(ns, [sys.executable, "-m", module, *args], timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        observed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return observed
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        problems = kernel.cleanup()
        assert not problems, problems
