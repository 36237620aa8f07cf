"""Stats against the real Envoy: the same config and traffic give the same counters for
completed upstream requests, cluster membership, header names with underscores, circuit breaker
overflows, response codes, connect failures, pending requests and retries, DNS clusters'
resolutions (update_*), in /stats and in /stats/prometheus."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.proxy.running import (
    RecordingUpstream,
    ThreadedUpstream,
    cluster,
    exchange,
    free_port,
    hcm_bootstrap,
    read_head,
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


def _request(path: str, headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n".encode()


def _get(port: int, path: str, headers: str = "") -> bytes:
    return exchange(port, _request(path, headers)).split(b"\r\n", 1)[0]


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


CONFIG_UPDATE_STATS = ("update_attempt", "update_success", "update_failure", "update_no_rebuild",
                       "update_empty", "assignment_stale", "assignment_timeout_received",
                       "assignment_use_cached", "version", "warming_state")


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_a_static_cluster_shows_the_config_update_stats_at_zero(
        kind: str, upstream: RecordingUpstream, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = hcm_bootstrap(port, "              - {match: {prefix: /}, route: {cluster: ok}}",
                           cluster("ok", upstream.port), admin_port=admin)
    with running_proxy(kind, config, port, tmp_path):
        values = _values(admin, *(f"cluster.ok.{stat}" for stat in CONFIG_UPDATE_STATS))
        prometheus = _stats(admin, "stats/prometheus")
    assert values == {f"cluster.ok.{stat}": 0 for stat in CONFIG_UPDATE_STATS}
    assert "# TYPE envoy_cluster_update_no_rebuild counter" in prometheus
    assert "# TYPE envoy_cluster_warming_state gauge" in prometheus
    assert "# TYPE envoy_cluster_version gauge" in prometheus



def _dns_cluster(name: str, kind: str, *ports: int) -> str:
    """A DNS cluster of one endpoint per port, each named `localhost` (/etc/hosts answers it,
    the same address every 0.2 s)."""
    endpoints = ", ".join(f"{{endpoint: {{address: {{socket_address: {{address: localhost, port_value: {port}}}}}}}}}"
                          for port in ports)
    return f"""  - name: {name}
    type: {kind}
    connect_timeout: 1s
    dns_refresh_rate: 0.2s
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{endpoints}]}}]"""


def _settled_updates(admin: int, name: str) -> dict[str, int]:
    """The cluster's update_* stats, read between two resolutions (attempts all answered)."""
    stats = ("update_attempt", "update_success", "update_failure", "update_no_rebuild")
    for _ in range(50):
        values = _values(admin, *(f"cluster.{name}.{stat}" for stat in stats))
        counts = {stat: values[f"cluster.{name}.{stat}"] for stat in stats}
        if counts["update_attempt"] == counts["update_success"] + counts["update_failure"]:
            return counts
        time.sleep(0.01)
    raise AssertionError(f"cluster {name}: a resolution always in flight: {counts}")


@pytest.mark.parametrize("kind", ["tulle", "envoy"])
def test_each_endpoint_of_a_dns_cluster_counts_its_resolutions(
        kind: str, upstream: RecordingUpstream, tmp_path: Path) -> None:
    # Envoy resolves a STRICT_DNS cluster's endpoints each on its own, even two of one name:
    # each resolution is an attempt and a success, and all but each endpoint's first leave
    # the hosts as they were; a LOGICAL_DNS cluster's one endpoint alike
    port, admin = free_port(), free_port()
    clusters = "\n".join((_dns_cluster("strict", "STRICT_DNS", upstream.port, free_port()),
                          _dns_cluster("logical", "LOGICAL_DNS", upstream.port)))
    with running_proxy(kind, hcm_bootstrap(port, "              - {match: {prefix: /}, route: {cluster: strict}}",
                                           clusters, admin_port=admin), port, tmp_path):
        time.sleep(1.0)
        strict, logical = _settled_updates(admin, "strict"), _settled_updates(admin, "logical")
    print(kind, strict, logical)
    assert strict["update_attempt"] >= 6
    assert strict == {"update_attempt": strict["update_attempt"], "update_success": strict["update_attempt"],
                      "update_failure": 0, "update_no_rebuild": strict["update_attempt"] - 2}
    assert logical["update_attempt"] >= 3
    assert logical == {"update_attempt": logical["update_attempt"], "update_success": logical["update_attempt"],
                       "update_failure": 0, "update_no_rebuild": logical["update_attempt"] - 1}


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


# --- one sitting of traffic per proxy, then one behaviour per test --------------------------

class ScriptedUpstream(ThreadedUpstream):
    """An HTTP/1.1 upstream whose answer the path chooses: `/s/CODE` answers CODE, `/held...`
    waits for `release` (or 10 s) and answers 200, `/flaky` answers 503 the first time and
    200 after; anything else 200."""

    timeout = 15.0

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = 0   # requests waiting for `release`
        self.flaky_seen = False
        super().__init__()

    def _status(self, path: str) -> int:
        if path.startswith("/s/"):
            return int(path[3:6])
        if path.startswith("/held"):
            self.held += 1
            self.release.wait(10)
            return 200
        if path.startswith("/flaky") and not self.flaky_seen:
            self.flaky_seen = True
            return 503
        return 200

    def serve(self, conn: socket.socket) -> None:
        buffer = b""
        while not self.closing.is_set() and (request := read_head(conn, buffer)) is not None:
            head, buffer = request
            status = self._status(head.split(b" ", 2)[1].decode())
            conn.sendall(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok".encode())

    def close(self) -> None:
        self.release.set()
        super().close()


SITTING_ROUTES = """              - {match: {prefix: /refused}, route: {cluster: refused, retry_policy: {retry_on: connect-failure, num_retries: 2}}}
              - {match: {prefix: /flaky}, route: {cluster: codes, retry_policy: {retry_on: 5xx, num_retries: 1}}}
              - {match: {prefix: /none}, route: {cluster: empty}}
              - {match: {prefix: /held/rq}, route: {cluster: max_requests}}
              - {match: {prefix: /held/pending}, route: {cluster: max_pending}}
              - {match: {prefix: /s/503/no-retry-left}, route: {cluster: max_retries, retry_policy: {retry_on: 5xx, num_retries: 1}}}
              - {match: {prefix: /}, route: {cluster: codes}}"""


@dataclass
class Sitting:
    listener: str                # the listener's stat name, ADDRESS_PORT
    sent: int                    # bytes of the requests sent
    statuses: dict[str, bytes]   # by request name
    stats: dict[str, str]        # /stats after the traffic
    prometheus: str              # /stats/prometheus after the traffic


def _sitting(kind: str, workdir: Path) -> Sitting:
    """The same traffic through `kind`: responses 200, 301, 404, 503 from `codes`; a request
    whose three connects are refused; a retry that succeeds; a cluster without hosts; one
    request over max_requests, one over max_pending_requests and one retry over max_retries."""
    upstream = ScriptedUpstream()
    port, admin = free_port(), free_port()
    clusters = "\n".join((
        cluster("codes", upstream.port), cluster("refused", free_port()),
        "  - name: empty\n    connect_timeout: 1s\n    load_assignment: {cluster_name: empty, endpoints: []}",
        cluster("max_requests", upstream.port, extra="    circuit_breakers: {thresholds: [{max_requests: 1}]}"),
        cluster("max_pending", upstream.port,
                extra="    circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 1}]}"),
        cluster("max_retries", upstream.port, extra="    circuit_breakers: {thresholds: [{max_retries: 0}]}")))
    statuses: dict[str, bytes] = {}
    held: list[threading.Thread] = []
    try:
        with running_proxy(kind, hcm_bootstrap(port, SITTING_ROUTES, clusters, admin_port=admin), port, workdir):
            requests = (("200", "/"), ("301", "/s/301"), ("404", "/s/404"), ("503", "/s/503"),
                        ("refused", "/refused"), ("flaky", "/flaky"), ("none", "/none"),
                        ("no retry left", "/s/503/no-retry-left"))
            for name, path in requests:
                statuses[name] = _status(_get(port, path))
            for name, path in (("held rq", "/held/rq"), ("held pending", "/held/pending"),
                               ("waiting pending", "/held/pending")):
                thread = threading.Thread(target=lambda n=name, p=path: statuses.__setitem__(n, _status(_get(port, p))))
                thread.start()
                held.append(thread)
                time.sleep(0.3)   # (reached the upstream, or waiting for the one connection)
            statuses["over max_requests"] = _status(_get(port, "/held/rq"))
            statuses["over max_pending_requests"] = _status(_get(port, "/held/pending"))
            upstream.release.set()
            for thread in held:
                thread.join(15)
            time.sleep(0.3)
            text = _stats(admin)
            sent = sum(len(_request(path)) for path in (
                *(path for _, path in requests), "/held/rq", "/held/pending", "/held/pending", "/held/rq",
                "/held/pending"))
            return Sitting(f"127.0.0.1_{port}", sent, statuses, dict(line.split(": ", 1) for line in text.splitlines() if ": " in line),
                           _stats(admin, "stats/prometheus"))
    finally:
        upstream.close()
        for thread in held:
            thread.join(1)


def _status(reply_line: bytes) -> bytes:
    return reply_line.split(b" ")[1] if b" " in reply_line else b"-"


@pytest.fixture(scope="module", params=["tulle", "envoy"])
def sitting(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sitting:
    observed = _sitting(request.param, tmp_path_factory.mktemp(f"sitting-{request.param}"))
    assert observed.statuses == {
        "200": b"200", "301": b"301", "404": b"404", "503": b"503", "refused": b"503", "flaky": b"200",
        "none": b"503", "no retry left": b"503", "held rq": b"200", "held pending": b"200",
        "waiting pending": b"200", "over max_requests": b"503", "over max_pending_requests": b"503"}
    return observed


def _cluster(sitting: Sitting, name: str, *stats: str) -> dict[str, str | None]:
    return {stat: sitting.stats.get(f"cluster.{name}.{stat}") for stat in stats}


def test_a_request_refused_by_max_requests_is_an_active_overflow(sitting: Sitting) -> None:
    assert _cluster(sitting, "max_requests", "upstream_rq_active_overflow", "upstream_rq_pending_overflow",
                    "upstream_rq_total", "upstream_rq_503") == {
        "upstream_rq_active_overflow": "1", "upstream_rq_pending_overflow": "0",
        "upstream_rq_total": "1", "upstream_rq_503": "1"}


def test_a_request_refused_by_max_pending_requests_is_a_pending_overflow(sitting: Sitting) -> None:
    # the waiting request found the one connection busy: one connection overflow, and it was
    # pending, as was the first one while its connection was made
    assert _cluster(sitting, "max_pending", "upstream_rq_pending_overflow", "upstream_rq_active_overflow",
                    "upstream_cx_overflow", "upstream_rq_pending_total", "upstream_rq_total") == {
        "upstream_rq_pending_overflow": "1", "upstream_rq_active_overflow": "0", "upstream_cx_overflow": "1",
        "upstream_rq_pending_total": "2", "upstream_rq_total": "2"}


def test_a_retry_refused_by_max_retries_is_a_retry_overflow(sitting: Sitting) -> None:
    assert _cluster(sitting, "max_retries", "upstream_rq_retry_overflow", "upstream_rq_retry",
                    "upstream_rq_retry_limit_exceeded", "upstream_rq_total") == {
        "upstream_rq_retry_overflow": "1", "upstream_rq_retry": "0", "upstream_rq_retry_limit_exceeded": "0",
        "upstream_rq_total": "1"}


def test_each_response_code_is_counted_once_seen(sitting: Sitting) -> None:
    counted = {name: value for name, value in sitting.stats.items()
               if re.fullmatch(r"cluster\.codes\.(external\.)?upstream_rq_(\d{3}|\dxx|completed)", name)}
    # the flaky request's 200 (not the 503 it retried); no 1xx seen, so no upstream_rq_1xx
    assert counted == {
        "cluster.codes.upstream_rq_200": "2", "cluster.codes.upstream_rq_301": "1",
        "cluster.codes.upstream_rq_404": "1", "cluster.codes.upstream_rq_503": "1",
        "cluster.codes.upstream_rq_2xx": "2", "cluster.codes.upstream_rq_3xx": "1",
        "cluster.codes.upstream_rq_4xx": "1", "cluster.codes.upstream_rq_5xx": "1",
        "cluster.codes.upstream_rq_completed": "5",
        "cluster.codes.external.upstream_rq_200": "2", "cluster.codes.external.upstream_rq_301": "1",
        "cluster.codes.external.upstream_rq_404": "1", "cluster.codes.external.upstream_rq_503": "1",
        "cluster.codes.external.upstream_rq_2xx": "2", "cluster.codes.external.upstream_rq_3xx": "1",
        "cluster.codes.external.upstream_rq_4xx": "1", "cluster.codes.external.upstream_rq_5xx": "1",
        "cluster.codes.external.upstream_rq_completed": "5"}


def test_a_response_class_never_seen_has_no_stat(sitting: Sitting) -> None:
    # the refused cluster's one response was its local 503
    assert sorted(name for name in sitting.stats
                  if re.fullmatch(r"cluster\.refused\.(external\.)?upstream_rq_(\d{3}|\dxx)", name)) == [
        "cluster.refused.external.upstream_rq_503", "cluster.refused.external.upstream_rq_5xx",
        "cluster.refused.upstream_rq_503", "cluster.refused.upstream_rq_5xx"]


def test_a_request_whose_connects_all_fail_is_never_an_upstream_request(sitting: Sitting) -> None:
    # three attempts, each pending for a connection that was refused; two retries, then none left
    assert _cluster(sitting, "refused", "upstream_rq_total", "upstream_rq_pending_total",
                    "upstream_rq_pending_failure_eject", "upstream_cx_total", "upstream_cx_connect_fail",
                    "upstream_cx_destroy", "upstream_rq_retry", "upstream_rq_retry_limit_exceeded",
                    "upstream_rq_completed", "upstream_rq_503") == {
        "upstream_rq_total": "0", "upstream_rq_pending_total": "3", "upstream_rq_pending_failure_eject": "3",
        "upstream_cx_total": "3", "upstream_cx_connect_fail": "3", "upstream_cx_destroy": "3",
        "upstream_rq_retry": "2", "upstream_rq_retry_limit_exceeded": "1", "upstream_rq_completed": "1",
        "upstream_rq_503": "1"}


def test_only_requests_without_an_idle_connection_are_pending(sitting: Sitting) -> None:
    # six requests one after the other on keep-alive upstream connections: the first found
    # none, and the flaky request's retry found none either (its 503's connection was
    # dropped, its response abandoned)
    assert _cluster(sitting, "codes", "upstream_rq_total", "upstream_rq_pending_total", "upstream_cx_total",
                    "upstream_cx_http1_total") == {
        "upstream_rq_total": "6", "upstream_rq_pending_total": "2", "upstream_cx_total": "2",
        "upstream_cx_http1_total": "2"}


def test_a_retry_that_gets_an_answer_is_a_retry_success(sitting: Sitting) -> None:
    assert _cluster(sitting, "codes", "upstream_rq_retry", "upstream_rq_retry_success",
                    "upstream_rq_retry_limit_exceeded") == {
        "upstream_rq_retry": "1", "upstream_rq_retry_success": "1", "upstream_rq_retry_limit_exceeded": "0"}


def test_no_healthy_upstream_is_charged_to_the_cluster_as_503(sitting: Sitting) -> None:
    assert _cluster(sitting, "empty", "upstream_cx_none_healthy", "upstream_rq_503", "upstream_rq_completed",
                    "upstream_rq_total") == {
        "upstream_cx_none_healthy": "1", "upstream_rq_503": "1", "upstream_rq_completed": "1",
        "upstream_rq_total": "0"}


def test_the_connection_managers_response_classes_are_counted(sitting: Sitting) -> None:
    assert {stat: sitting.stats[f"http.main.{stat}"] for stat in (
        "downstream_rq_1xx", "downstream_rq_2xx", "downstream_rq_3xx", "downstream_rq_4xx", "downstream_rq_5xx",
        "downstream_rq_completed", "downstream_rq_total")} == {
        "downstream_rq_1xx": "0", "downstream_rq_2xx": "5", "downstream_rq_3xx": "1", "downstream_rq_4xx": "1",
        "downstream_rq_5xx": "6", "downstream_rq_completed": "13", "downstream_rq_total": "13"}


def test_prometheus_has_each_response_code_as_a_label(sitting: Sitting) -> None:
    lines = sitting.prometheus.splitlines()
    assert "# TYPE envoy_cluster_upstream_rq counter" in lines
    assert 'envoy_cluster_upstream_rq{envoy_response_code="404",envoy_cluster_name="codes"} 1' in lines
    assert 'envoy_cluster_external_upstream_rq{envoy_response_code="503",envoy_cluster_name="codes"} 1' in lines
    assert 'envoy_cluster_upstream_rq_completed{envoy_cluster_name="codes"} 5' in lines


def test_prometheus_has_each_response_class_as_a_label(sitting: Sitting) -> None:
    lines = sitting.prometheus.splitlines()
    assert "# TYPE envoy_cluster_upstream_rq_xx counter" in lines
    assert 'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="codes"} 2' in lines
    assert "# TYPE envoy_http_downstream_rq_xx counter" in lines
    assert 'envoy_http_downstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="main"} 6' \
        in lines
    assert not [line for line in lines if re.match(r"envoy_(cluster_upstream|http_downstream)_rq_\dxx", line)]


def test_prometheus_has_the_overflow_counters(sitting: Sitting) -> None:
    lines = sitting.prometheus.splitlines()
    assert 'envoy_cluster_upstream_rq_active_overflow{envoy_cluster_name="max_requests"} 1' in lines
    assert 'envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name="max_pending"} 1' in lines
    assert 'envoy_cluster_upstream_rq_retry_overflow{envoy_cluster_name="max_retries"} 1' in lines
    assert 'envoy_cluster_upstream_rq_pending_failure_eject{envoy_cluster_name="refused"} 3' in lines


def test_no_healthy_upstream_in_a_cluster_without_hosts_is_a_panic(sitting: Sitting) -> None:
    assert _cluster(sitting, "empty", "lb_healthy_panic") == {"lb_healthy_panic": "1"}
    assert _cluster(sitting, "codes", "lb_healthy_panic") == {"lb_healthy_panic": "0"}


def test_every_downstream_connection_and_request_is_http1(sitting: Sitting) -> None:
    assert {stat: sitting.stats[f"http.main.{stat}"] for stat in (
        "downstream_cx_http1_active", "downstream_cx_http2_total", "downstream_cx_http2_active",
        "downstream_cx_http3_total", "downstream_cx_http3_active", "downstream_rq_http1_total",
        "downstream_rq_http2_total", "downstream_rq_http3_total")} == {
        "downstream_cx_http1_active": "0", "downstream_cx_http2_total": "0", "downstream_cx_http2_active": "0",
        "downstream_cx_http3_total": "0", "downstream_cx_http3_active": "0", "downstream_rq_http1_total": "13",
        "downstream_rq_http2_total": "0", "downstream_rq_http3_total": "0"}


def test_a_listener_counts_its_connections(sitting: Sitting) -> None:
    # each request on a connection of its own, and the one that found the port open
    assert {stat: sitting.stats[f"listener.{sitting.listener}.{stat}"] for stat in (
        "downstream_cx_total", "downstream_cx_active", "downstream_cx_destroy")} == {
        "downstream_cx_total": "14", "downstream_cx_active": "0", "downstream_cx_destroy": "14"}
    assert (f'envoy_listener_downstream_cx_total{{envoy_listener_address="{sitting.listener}"}} 14'
            in sitting.prometheus.splitlines())


def test_the_bytes_each_way_are_counted(sitting: Sitting) -> None:
    http = {stat: int(sitting.stats[f"http.main.{stat}"])
            for stat in ("downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total")}
    assert http["downstream_cx_rx_bytes_total"] == sitting.sent
    assert http["downstream_cx_tx_bytes_total"] > 13 * len(b"HTTP/1.1 200 OK\r\n\r\n")
    # the codes cluster's six answers (the flaky one's 503 too), each of the upstream's one shape
    answer = len(b"HTTP/1.1 200 X\r\ncontent-length: 2\r\n\r\nok")
    assert _cluster(sitting, "codes", "upstream_cx_rx_bytes_total") == {"upstream_cx_rx_bytes_total": str(6 * answer)}
    assert int(sitting.stats["cluster.codes.upstream_cx_tx_bytes_total"]) > 6 * len(b"GET / HTTP/1.1\r\n\r\n")


def test_who_closed_each_connection_is_counted(sitting: Sitting) -> None:
    # every request said `connection: close`, so the proxy closed those connections; the one
    # that found the port open, the client closed; the refused connects were the upstream's
    assert {stat: sitting.stats[f"http.main.{stat}"] for stat in (
        "downstream_cx_destroy", "downstream_cx_destroy_local", "downstream_cx_destroy_remote")} == {
        "downstream_cx_destroy": "14", "downstream_cx_destroy_local": "13", "downstream_cx_destroy_remote": "1"}
    assert _cluster(sitting, "refused", "upstream_cx_destroy_local", "upstream_cx_destroy_remote") == {
        "upstream_cx_destroy_local": "0", "upstream_cx_destroy_remote": "3"}


def test_the_high_priority_breaker_is_shown_closed(sitting: Sitting) -> None:
    assert {name: value for name, value in sitting.stats.items()
            if name.startswith("cluster.codes.circuit_breakers.high.")} == {
        f"cluster.codes.circuit_breakers.high.{gauge}": "0"
        for gauge in ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")}
