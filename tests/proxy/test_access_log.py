"""Access log lines in Envoy's default format: the same line (but for times and ids) from
tulle-proxy as from Envoy for the same requests."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.proxy.running import RecordingUpstream, bootstrap, exchange, free_port, running_proxy

VOLATILE = [
    (re.compile(r"^\[[0-9T:.-]+Z\]"), "[TIME]"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "ID"),
    (re.compile(r'(\d+ \S+ \d+ \d+) \d+ (\d+|-) "'), r'\1 DURATION SERVICE "'),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
]


def normalised(line: str) -> str:
    for pattern, replacement in VOLATILE:
        line = pattern.sub(replacement, line)
    return line


def log_lines(kind: str, tmp_path: Path) -> list[str]:
    upstream = RecordingUpstream()
    port = free_port()
    log = tmp_path / f"{kind}-access.log"
    extra = f"""          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}"""
    try:
        with running_proxy(kind, bootstrap(port, upstream.port, extra), port, tmp_path):
            exchange(port, b"GET /logged?q=1 HTTP/1.1\r\nhost: example.com\r\nuser-agent: tester\r\n"
                           b"connection: close\r\n\r\n")
            exchange(port, b"POST /upload HTTP/1.1\r\nhost: example.com\r\ncontent-length: 5\r\n"
                           b"x-forwarded-for: 10.1.2.3\r\nconnection: close\r\n\r\nhello")
            # both flush their access logs about once a second
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                    not log.exists() or len(log.read_text().splitlines()) < 2):
                time.sleep(0.1)
    finally:
        upstream.close()
    return [normalised(line) for line in log.read_text().splitlines()]


@pytest.mark.timeout(60)
def test_access_log_lines_match_envoys(tmp_path: Path) -> None:
    envoy = log_lines("envoy", tmp_path)
    tulle = log_lines("tulle", tmp_path)
    assert len(envoy) == 2
    assert tulle == envoy


@pytest.mark.timeout(60)
def test_lines_still_buffered_at_exit_are_written(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    port = free_port()
    log = tmp_path / "exit-access.log"
    extra = f"""          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}"""
    try:
        with running_proxy("tulle", bootstrap(port, upstream.port, extra), port, tmp_path):
            exchange(port, b"GET /last HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n")
        # stopped (SIGTERM) well within the second after which lines are flushed
    finally:
        upstream.close()
    assert '"GET /last HTTP/1.1" 200' in log.read_text()
