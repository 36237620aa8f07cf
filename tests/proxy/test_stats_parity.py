"""Stats against the real Envoy: the same config and traffic give the same counters for
completed upstream requests, cluster membership and header names with underscores."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.running import (
    RecordingUpstream,
    cluster,
    exchange,
    free_port,
    hcm_bootstrap,
    running_proxy,
    silent_upstream,
)

ROUTES = ("              - {match: {prefix: /refused}, route: {cluster: refused, "
          "retry_policy: {retry_on: connect-failure, num_retries: 2}}}\n"
          "              - {match: {prefix: /silent}, route: {cluster: silent, timeout: 0.2s}}\n"
          "              - {match: {prefix: /}, route: {cluster: ok}}")


def _stats(admin: int, page: str = "stats") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/{page}", timeout=5) as reply:
        text: str = reply.read().decode()
        return text


def _values(admin: int, *names: str) -> dict[str, int]:
    lines = dict(line.split(": ", 1) for line in _stats(admin).splitlines() if ": " in line)
    return {name: int(lines[name]) for name in names}


def _get(port: int, path: str, headers: str = "") -> bytes:
    reply = exchange(port, f"GET {path} HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n".encode())
    return reply.split(b"\r\n", 1)[0]


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_every_answer_and_local_failure_charged_to_a_cluster_is_a_completed_request(
        kind: str, upstream: RecordingUpstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with silent_upstream() as silent:
        clusters = "\n".join((cluster("ok", upstream.port), cluster("refused", free_port()),
                              cluster("silent", silent)))
        with running_proxy(kind, hcm_bootstrap(port, ROUTES, clusters, admin_port=admin), port, tmp_path):
            statuses = [_get(port, path) for path in ("/", "/", "/refused", "/silent")]
            values = _values(admin, "cluster.ok.upstream_rq_completed", "cluster.refused.upstream_rq_completed",
                             "cluster.refused.upstream_rq_5xx", "cluster.silent.upstream_rq_completed",
                             "cluster.silent.upstream_rq_5xx")
    assert [status.split(b" ")[1] for status in statuses] == [b"200", b"200", b"503", b"504"]
    # the refused request was tried three times, and completed once
    assert values == {"cluster.ok.upstream_rq_completed": 2, "cluster.refused.upstream_rq_completed": 1,
                      "cluster.refused.upstream_rq_5xx": 1, "cluster.silent.upstream_rq_completed": 1,
                      "cluster.silent.upstream_rq_5xx": 1}


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_static_clusters_hosts_are_one_membership_change(
        kind: str, upstream: RecordingUpstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = hcm_bootstrap(port, "              - {match: {prefix: /}, route: {cluster: ok}}",
                           cluster("ok", upstream.port, free_port()), admin_port=admin)
    with running_proxy(kind, config, port, tmp_path):
        values = _values(admin, "cluster.ok.membership_change", "cluster.ok.membership_total",
                         "cluster.ok.membership_healthy", "cluster.ok.membership_degraded",
                         "cluster.ok.membership_excluded")
        prometheus = _stats(admin, "stats/prometheus")
    assert values == {"cluster.ok.membership_change": 1, "cluster.ok.membership_total": 2,
                      "cluster.ok.membership_healthy": 2, "cluster.ok.membership_degraded": 0,
                      "cluster.ok.membership_excluded": 0}
    assert "# TYPE envoy_cluster_membership_change counter" in prometheus
    assert "# TYPE envoy_cluster_membership_degraded gauge" in prometheus


UNDERSCORES = "x_one: 1\r\nx_two: 2\r\nx-three: 3\r\n"


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_each_header_dropped_for_its_underscore_is_counted(
        kind: str, upstream: RecordingUpstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = hcm_bootstrap(port, "              - {match: {prefix: /}, route: {cluster: ok}}",
                           cluster("ok", upstream.port), admin_port=admin, hcm_extra=(
                               "          common_http_protocol_options: {headers_with_underscores_action: DROP_HEADER}"))
    with running_proxy(kind, config, port, tmp_path):
        statuses = [_get(port, "/", UNDERSCORES) for _ in range(2)]
        values = _values(admin, "http1.dropped_headers_with_underscores",
                         "http1.requests_rejected_with_underscores_in_headers",
                         "cluster.ok.http1.dropped_headers_with_underscores")
        prometheus = _stats(admin, "stats/prometheus")
    assert [status.split(b" ")[1] for status in statuses] == [b"200", b"200"]
    assert b"x_one" not in b"".join(upstream.received)
    assert values == {"http1.dropped_headers_with_underscores": 4,
                      "http1.requests_rejected_with_underscores_in_headers": 0,
                      "cluster.ok.http1.dropped_headers_with_underscores": 0}
    assert re.search(r"^envoy_http1_dropped_headers_with_underscores(\{\})? 4$", prometheus, re.M)


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_each_request_refused_for_an_underscore_is_counted(
        kind: str, upstream: RecordingUpstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = hcm_bootstrap(port, "              - {match: {prefix: /}, route: {cluster: ok}}",
                           cluster("ok", upstream.port), admin_port=admin, hcm_extra=(
                               "          common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}"))
    with running_proxy(kind, config, port, tmp_path):
        status = _get(port, "/", UNDERSCORES)
        values = _values(admin, "http1.dropped_headers_with_underscores",
                         "http1.requests_rejected_with_underscores_in_headers")
    assert status.split(b" ")[1] == b"400"
    assert upstream.received == []
    assert values == {"http1.dropped_headers_with_underscores": 0,
                      "http1.requests_rejected_with_underscores_in_headers": 1}
