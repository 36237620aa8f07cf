"""Per-host counters on admin /clusters, against the real Envoy: a request that times out
is one of the host's requests, an error and a timeout."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from proxy.admin.clusters_text import parse_clusters
from tests.proxy.running import bootstrap, exchange, free_port, running_proxy, silent_upstream


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_timed_out_request_is_a_host_request_error_and_timeout(kind: str, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with (silent_upstream() as upstream,
          running_proxy(kind, bootstrap(port, upstream, admin_port=admin, route_extra=", timeout: 0.3s"),
                        port, tmp_path)):
        response = exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 504 ")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=5) as page:
            [host] = parse_clusters(page.read().decode())["a"].hosts.values()
    assert (host["rq_total"], host["rq_error"], host["rq_timeout"], host["rq_success"]) == ("1", "1", "1", "0")
