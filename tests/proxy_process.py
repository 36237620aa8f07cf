"""A proxy, a real Envoy or tulle-proxy, as a child process of a test.

Rules: each process gets a temp dir of its own holding its bootstrap and its log (stdout and
stderr); it is ready once its admin address is known (Envoy writes its ephemeral one to
`--admin-address-path`; tulle-proxy's is picked free and written into the bootstrap) and,
with `until_live`, once `/ready` answers 200. It is stopped by its PID: SIGTERM, SIGKILL
after 10 s, then its temp dir is removed; a process that does not start in time is stopped
the same way and the error carries the tail of its log. Every Envoy gets a `--base-id` that
no other test process uses (derived from this process's PID) and `--disable-hot-restart`.
"""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from proxy.stats_text import parse_stats
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
ENVOY = REPO / ".venv" / "bin" / "envoy"
TULLE = REPO / ".venv" / "bin" / "tulle-proxy"
STOP_TIMEOUT = 10.0

_base_ids = iter(range(os.getpid() % 10000 * 100 + 7, 1 << 30))


def next_base_id() -> int:
    """An Envoy `--base-id` no other test process on the machine is using."""
    return next(_base_ids)


class ProxyProcess:
    """`kind` started on `bootstrap` (a dict, written as YAML; its admin address is set here)."""

    def __init__(self, kind: Literal["envoy", "tulle-proxy"], bootstrap: Mapping[str, Any], prefix: str,
                 until_live: bool = False, ready_timeout: float = 20.0, concurrency: int = 1) -> None:
        self.kind = kind
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.dir = Path(self._dir.name)
        self.admin = ""
        config = copy.deepcopy(dict(bootstrap))
        admin_file = self.dir / "admin"
        if kind == "envoy":
            config["admin"] = _admin_address(0)
            argv = [str(ENVOY), "--base-id", str(next_base_id()), "--admin-address-path", str(admin_file),
                    "--log-level", "warn", "--concurrency", str(concurrency), "--disable-hot-restart"]
        else:
            port = free_port()
            config["admin"] = _admin_address(port)
            self.admin = f"127.0.0.1:{port}"
            argv = [str(TULLE), "--log-level", "warning", "--concurrency", str(concurrency)]
        (self.dir / "bootstrap.yaml").write_text(yaml.safe_dump(config))
        self._log = open(self.dir / "proxy.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([*argv, "-c", str(self.dir / "bootstrap.yaml")],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(admin_file, until_live, time.monotonic() + ready_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, admin_file: Path, until_live: bool, deadline: float) -> None:
        while True:
            if not self.admin and admin_file.exists():
                self.admin = admin_file.read_text().strip()
            if self.admin and (not until_live or self._live()):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start:\n{self.log()}")
            time.sleep(0.05)

    def _live(self) -> bool:
        try:
            self.get("/ready", timeout=1)
        except OSError:  # refused, or an HTTPError for 503 INITIALIZING
            return False
        return True

    def log(self) -> str:
        """The last 4000 characters the process wrote."""
        return (self.dir / "proxy.log").read_text(errors="replace")[-4000:]

    def get(self, path: str, timeout: float = 5) -> bytes:
        """GET `path` from the admin; an error status raises urllib's HTTPError."""
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=timeout) as reply:
            body: bytes = reply.read()
            return body

    def stats(self, pattern: str = "") -> dict[str, int]:
        """The counters and gauges whose names match the regex `pattern` (the admin's own filter)."""
        query = f"?filter={urllib.parse.quote(pattern)}" if pattern else ""
        return dict(parse_stats(self.get(f"/stats{query}").decode()).values)

    def close(self) -> None:
        try:
            self.proc.terminate()
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self._log.close()
            self._dir.cleanup()


def _admin_address(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
