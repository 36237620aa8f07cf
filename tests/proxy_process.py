"""A proxy, a real Envoy or tulle-proxy, as a child process of a test.

Rules: each process gets a temp dir of its own holding its bootstrap and, unless the caller
names a `log_path`, its log (stdout and stderr). It is ready once its admin address is known
and accepts connections (Envoy writes its ephemeral one to `--admin-address-path`; tulle-proxy's
is the bootstrap's, or one picked free and written into it), with `until_live` once `/ready` answers 200, and with
`listening` once that port accepts connections. It is stopped by its PID: SIGTERM, SIGKILL
after 10 s, then its temp dir is removed; a process that does not start in time is stopped
the same way and the error carries the tail of its log. Every Envoy gets a `--base-id` that
no other test process uses (derived from this process's PID) and `--disable-hot-restart`.
"""

from __future__ import annotations

import copy
import os
import socket
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
    """`kind` started on `bootstrap` (a dict, written as YAML); without an admin address in the
    bootstrap, one is set here."""

    def __init__(self, kind: Literal["envoy", "tulle-proxy"], bootstrap: Mapping[str, Any], prefix: str,
                 until_live: bool = False, ready_timeout: float = 20.0, *, listening: int | None = None,
                 log_path: Path | None = None, log_level: str = "warning", concurrency: int = 1) -> None:
        self.kind = kind
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.dir = Path(self._dir.name)
        self.log_path = log_path or self.dir / "proxy.log"
        self.admin = ""
        config = copy.deepcopy(dict(bootstrap))
        admin_file = self.dir / "admin"
        if kind == "envoy":
            config.setdefault("admin", _admin_address(0))
            envoy_level = "warn" if log_level == "warning" else log_level
            argv = [str(ENVOY), "--base-id", str(next_base_id()), "--admin-address-path", str(admin_file),
                    "--log-level", envoy_level, "--concurrency", str(concurrency), "--disable-hot-restart"]
        else:
            config.setdefault("admin", _admin_address(free_port()))
            address = config["admin"]["address"]["socket_address"]
            self.admin = f"{address['address']}:{address['port_value']}"
            argv = [str(TULLE), "--log-level", log_level, "--concurrency", str(concurrency)]
        (self.dir / "bootstrap.yaml").write_text(yaml.safe_dump(config))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        # A session of its own: a signal meant for the test run's terminal never reaches it.
        self.proc = subprocess.Popen([*argv, "-c", str(self.dir / "bootstrap.yaml")],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(admin_file, until_live, listening, time.monotonic() + ready_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, admin_file: Path, until_live: bool, listening: int | None, deadline: float) -> None:
        while True:
            if not self.admin and admin_file.exists():
                self.admin = admin_file.read_text().strip()
            if (self.admin and self._admin_accepts() and (not until_live or self._live())
                    and (listening is None or _accepts("127.0.0.1", listening))):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start:\n{self.log()}")
            time.sleep(0.05)

    def _admin_accepts(self) -> bool:
        # tulle-proxy's admin address is known before it binds (a test may ask it at once)
        host, _, port = self.admin.rpartition(":")
        return port == "0" or _accepts(host, int(port))

    def _live(self) -> bool:
        try:
            self.get("/ready", timeout=1)
        except OSError:  # refused, or an HTTPError for 503 INITIALIZING
            return False
        return True

    def log(self) -> str:
        """The last 4000 characters the process wrote."""
        return self.log_path.read_text(errors="replace")[-4000:]

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


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True
