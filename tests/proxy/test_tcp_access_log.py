"""tcp_proxy access logs: one line per connection, the same as Envoy's for the same config and
traffic (Istio's text format; times, durations and ephemeral ports aside)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.proxy.running import ThreadedUpstream, free_port, running_proxy
from tests.proxy.test_access_log_formats import ISTIO_TEXT, normalised


class DoublingUpstream(ThreadedUpstream):
    """Answers each connection's first read twice over, then closes."""

    def serve(self, conn: socket.socket) -> None:
        conn.sendall(conn.recv(100) * 2)


@contextmanager
def doubling_upstream() -> Iterator[int]:
    upstream = DoublingUpstream()
    try:
        yield upstream.port
    finally:
        upstream.close()


def listener(name: str, port: int, cluster: str, log: Path) -> str:
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: {json.dumps(ISTIO_TEXT)}}}}}"""


def cluster(name: str, port: int) -> str:
    return f"""
  - name: {name}
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"""


def log_lines(kind: str, tmp_path: Path) -> list[str]:
    log = tmp_path / f"{kind}-tcp.log"
    port, refused_port, refused = free_port(), free_port(), free_port()
    with doubling_upstream() as upstream:
        config = f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {free_port()}}}}}}}
static_resources:
  listeners:{listener("relay", port, "a", log)}{listener("refused", refused_port, "r", log)}
  clusters:{cluster("a", upstream)}{cluster("r", refused)}
"""
        with running_proxy(kind, config, port, tmp_path):   # (its readiness probe is line 1)
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.sendall(b"hello")
                assert sock.recv(100) == b"hellohello"
            time.sleep(0.1)
            with socket.create_connection(("127.0.0.1", refused_port), timeout=3) as sock, suppress(OSError):
                sock.sendall(b"hello")
                sock.recv(100)
            deadline = time.monotonic() + 10   # both flush about once a second
            while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
                time.sleep(0.1)
    # in content order: each connection's line is written when it closes, and the readiness
    # probe's pair may close after the relayed one (the upstream serves both at once); sorted,
    # the probe's line (0 bytes) comes first, the relayed one second, the refused one last
    return sorted(normalised(line) for line in log.read_text().splitlines(keepends=True))


@pytest.mark.timeout(60)
def test_tcp_proxy_access_log_lines_match_envoys(tmp_path: Path) -> None:
    envoy = log_lines("envoy", tmp_path)
    tulle = log_lines("tulle", tmp_path)
    assert len(envoy) == 3
    assert tulle == envoy
    assert " 5 10 " in envoy[1] and "UF,URX" in envoy[2]   # bytes each way; a refused upstream
