"""Timeouts while bodies stream, against the real Envoy: the same bootstrap and the same
traffic through tulle-proxy and Envoy 1.40, and the same outcome — what the client receives,
when the connection closes, the counters and the access log's flags and details.

An upstream that sends its head and part of its body and then stalls is cut by the stream
idle timeout (HCM or route), the retry policy's per_try_idle_timeout, the cluster's and the
connection manager's max_stream_duration; a body that keeps moving is not. Before the head,
the cluster's max_stream_duration and per_try_idle_timeout are retried as resets are, and
the per-try timers start only once a streamed request body is wholly sent. Each
mid-body case runs twice for tulle-proxy: on a fresh upstream connection (the router's
coroutine) and on a pooled one (the router's callback exchange)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.running import cluster, free_port, hcm_bootstrap, running_proxy

Script = Sequence[tuple[float, bytes | None]]   # (seconds to wait, bytes to send; None: close) for one response
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
WHOLE = HEAD + b"0123456789"
WARM_UP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
STALL = 4.0   # longer than any timeout here: the proxy gives up first
# (elapsed-time bounds tell which timer cut a stream, with room for a loaded machine: a timer
# may fire a little early, as Envoy's did at 0.4996 s for 0.5 s, and late by up to ~1 s)
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT% %RESPONSE_CODE_DETAILS%\\n"
KINDS = ["tulle", "envoy"]
# tulle-proxy relays a body from its router coroutine (a fresh upstream connection) or from a
# callback exchange (a pooled one); Envoy has one path
PATHS = [("tulle", False), ("tulle", True), ("envoy", False)]


class ScriptedUpstream:
    """An HTTP/1.1 upstream answering its n-th request (from 1, over all its connections)
    with `script(n)`; a request whose script ends before its response does stays unanswered
    until the proxy gives up on it."""

    def __init__(self, script: Callable[[int], Script]) -> None:
        self.script = script
        self.requests = 0
        self.connections = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(STALL + 2)
                while conn.recv(65536):
                    with self._lock:
                        self.requests += 1
                        number = self.requests
                    for delay, data in self.script(number):
                        time.sleep(delay)
                        if data is None:
                            return
                        conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@dataclass
class Outcome:
    response: bytes        # all the client received
    closed: bool           # the proxy closed the connection
    elapsed: float         # from the request to the end of the response or the close
    log: str               # the access log line: status, flags, bytes sent, details
    stats: dict[str, int]  # every counter, by name

    @property
    def body(self) -> bytes:
        return self.response.partition(b"\r\n\r\n")[2]

    @property
    def status(self) -> int:
        return int(self.response.split(b" ", 2)[1])


def _request(port: int, data: bytes, body: Script = ()) -> tuple[bytes, bool, float]:
    """Send `data` (then `body`'s chunks on their delays); read until the response's
    content-length is complete or the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=STALL + 3) as sock:
        start = time.monotonic()
        sock.sendall(data)
        for delay, chunk in body:
            time.sleep(delay)
            sock.sendall(chunk or b"")
        response = b""
        while True:
            head, found, rest = response.partition(b"\r\n\r\n")
            if found:
                length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                               if line.startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    return response, False, time.monotonic() - start
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return response, True, time.monotonic() - start
            response += chunk


def _stats(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as page:
        values = {}
        for line in page.read().decode().splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                values[name] = int(value)
        return values


def _access_log(path: Path, lines: int) -> str:
    """The last of `lines` access log lines (both proxies flush about once a second)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            break
        time.sleep(0.1)
    return path.read_text().splitlines()[-1] if path.exists() else ""


@pytest.fixture
def through(tmp_path: Path) -> Iterator[Callable[..., Outcome]]:
    """Run one request through a proxy of `kind` on a bootstrap with `hcm`, `route` and
    `cluster_extra` lines, to a ScriptedUpstream answering by `script`; with `pooled`, a
    first request leaves an idle upstream connection for it."""
    upstreams: list[ScriptedUpstream] = []

    def run(kind: str, script: Callable[[int], Script], *, hcm: str = "", route: str = "",
            cluster_extra: str = "", pooled: bool = False,
            request: bytes = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", body: Script = ()) -> Outcome:
        upstream = ScriptedUpstream((lambda n: [(0.0, WARM_UP)] if n == 1 else script(n - 1)) if pooled else script)
        upstreams.append(upstream)
        port, admin = free_port(), free_port()
        log = tmp_path / f"{kind}-access.log"
        logging = ("          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n"
                   "              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n"
                   f"              path: {log}\n"
                   f"              log_format: {{text_format_source: {{inline_string: \"{LOG_FORMAT}\"}}}}")
        config = hcm_bootstrap(port, f"              - {{match: {{prefix: /}}, route: {{cluster: a{route}}}}}",
                               cluster("a", upstream.port, extra=cluster_extra),
                               f"{hcm}\n{logging}" if hcm else logging, admin_port=admin)
        with running_proxy(kind, config, port, tmp_path):
            if pooled:
                warm_up, _, _ = _request(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                assert warm_up.endswith(b"\r\n\r\nok")
            response, closed, elapsed = _request(port, request, body)
            line = _access_log(log, 2 if pooled else 1)
            stats = _stats(admin)
        return Outcome(response, closed, elapsed, line, stats)

    yield run
    for upstream in upstreams:
        upstream.close()


def _stalls_after(*parts: tuple[float, bytes]) -> Callable[[int], Script]:
    """Every response: `parts`, then nothing more until the proxy gives up."""
    return lambda number: [*parts, (STALL, b"")]


def _cluster_options(common: str) -> str:
    return ("    typed_extension_protocol_options:\n"
            "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
            "        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
            "        explicit_http_config: {http_protocol_options: {}}\n"
            f"        common_http_protocol_options: {common}")


# The stream idle timeout


@pytest.mark.parametrize(("kind", "pooled"), PATHS)
@pytest.mark.parametrize("where", ["hcm", "route"])
def test_a_response_body_that_stalls_is_cut_by_the_stream_idle_timeout(
        through: Callable[..., Outcome], kind: str, pooled: bool, where: str) -> None:
    timeout = ({"hcm": "          stream_idle_timeout: 0.5s"} if where == "hcm"
               else {"route": ", idle_timeout: 0.5s"})
    outcome = through(kind, _stalls_after((0.0, HEAD + b"abc"), (0.2, b"d")), pooled=pooled, **timeout)
    assert outcome.status == 200
    assert outcome.body == b"abcd"
    assert outcome.closed
    # the cut 0.5 s after the last chunk, then the delayed close (1 s)
    assert 1.5 < outcome.elapsed < 3.0
    assert outcome.stats["http.main.downstream_rq_idle_timeout"] == 1
    assert outcome.log == "200 SI 4 stream_idle_timeout"


@pytest.mark.parametrize(("kind", "pooled"), PATHS)
def test_a_response_body_that_keeps_moving_outlives_the_stream_idle_timeout(
        through: Callable[..., Outcome], kind: str, pooled: bool) -> None:
    slow = [(0.0, HEAD + b"01")] + [(0.25, bytes([48 + digit])) for digit in range(2, 10)]
    outcome = through(kind, lambda number: slow, pooled=pooled, hcm="          stream_idle_timeout: 0.5s")
    assert outcome.body == b"0123456789"
    assert outcome.elapsed > 1.9   # well past the idle timeout
    assert outcome.stats.get("http.main.downstream_rq_idle_timeout", 0) == 0
    assert outcome.log == "200 - 10 via_upstream"


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_body_that_stalls_midway_gets_408_from_the_stream_idle_timeout(
        through: Callable[..., Outcome], kind: str) -> None:
    """Each chunk restarts the timer: the 408 comes 0.5 s after the last one, not the first."""
    outcome = through(kind, lambda number: [(STALL, WHOLE)], hcm="          stream_idle_timeout: 0.5s",
                      request=b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
                      body=[(0.3, b"de"), (0.3, b"f")])
    assert outcome.status == 408
    assert outcome.body == b"stream timeout"
    assert 1.0 < outcome.elapsed < 2.0
    assert outcome.stats["http.main.downstream_rq_idle_timeout"] == 1
    assert outcome.log == "408 SI 14 stream_idle_timeout"


# The retry policy's per_try_idle_timeout

PER_TRY_IDLE = ", retry_policy: {retry_on: '%s', num_retries: %d, per_try_idle_timeout: 0.5s}"


@pytest.mark.parametrize("kind", KINDS)
def test_an_attempt_without_a_head_within_the_per_try_idle_timeout_is_retried(
        through: Callable[..., Outcome], kind: str) -> None:
    outcome = through(kind, lambda number: [(STALL if number == 1 else 0.0, WHOLE)],
                      route=PER_TRY_IDLE % ("5xx", 2))
    assert outcome.status == 200
    assert 0.45 < outcome.elapsed < 2.0
    assert outcome.stats["cluster.a.upstream_rq_per_try_idle_timeout"] == 1
    assert outcome.stats["cluster.a.upstream_rq_retry"] == 1
    assert outcome.log == "200 - 10 via_upstream"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("retry_on", "attempts", "flags"), [("retriable-4xx", 1, "UT"), ("reset", 2, "URX,UT")])
def test_a_per_try_idle_timeout_not_retried_gets_504(
        through: Callable[..., Outcome], kind: str, retry_on: str, attempts: int, flags: str) -> None:
    """Not retried: the policy does not retry timeouts, or its one retry timed out too."""
    outcome = through(kind, lambda number: [(STALL, WHOLE)], route=PER_TRY_IDLE % (retry_on, 1))
    assert outcome.status == 504
    assert outcome.body == b"upstream request timeout"
    assert outcome.stats["cluster.a.upstream_rq_per_try_idle_timeout"] == attempts
    assert outcome.log == f"504 {flags} 24 upstream_per_try_idle_timeout"


@pytest.mark.parametrize("kind", KINDS)
def test_a_head_completed_after_the_per_try_idle_timeout_is_too_late(
        through: Callable[..., Outcome], kind: str) -> None:
    """Only a whole head is progress, not its first bytes."""
    outcome = through(kind, lambda number: [(0.3, HEAD[:10]), (0.3, HEAD[10:] + b"0123456789")],
                      route=PER_TRY_IDLE % ("retriable-4xx", 1))
    assert outcome.status == 504
    assert outcome.log == "504 UT 24 upstream_per_try_idle_timeout"


@pytest.mark.parametrize(("kind", "pooled"), PATHS)
def test_a_response_body_that_stalls_is_cut_by_the_per_try_idle_timeout(
        through: Callable[..., Outcome], kind: str, pooled: bool) -> None:
    outcome = through(kind, _stalls_after((0.0, HEAD + b"abc"), (0.3, b"d")), pooled=pooled,
                      route=PER_TRY_IDLE % ("5xx", 2))
    assert outcome.body == b"abcd"
    assert outcome.closed
    assert 1.65 < outcome.elapsed < 3.0   # 0.5 s after the last chunk, then the delayed close
    assert outcome.stats["cluster.a.upstream_rq_per_try_idle_timeout"] == 1
    assert outcome.stats.get("cluster.a.upstream_rq_retry", 0) == 0   # a response begun is not retried
    assert outcome.log == "200 UT 4 upstream_per_try_idle_timeout"


# The cluster's max_stream_duration

UPSTREAM_DURATION = _cluster_options("{max_stream_duration: 0.5s}")


@pytest.mark.parametrize(("kind", "pooled"), PATHS)
def test_the_clusters_max_stream_duration_cuts_a_response_body_in_flight(
        through: Callable[..., Outcome], kind: str, pooled: bool) -> None:
    outcome = through(kind, _stalls_after((0.0, HEAD + b"abc"), (0.2, b"d")), pooled=pooled,
                      cluster_extra=UPSTREAM_DURATION, route=", retry_policy: {retry_on: '5xx,reset', num_retries: 2}")
    assert outcome.body == b"abcd"
    assert outcome.closed
    assert 1.4 < outcome.elapsed < 3.0   # 0.5 s after the attempt began, then the delayed close
    assert outcome.stats["cluster.a.upstream_rq_max_duration_reached"] == 1
    assert outcome.stats.get("cluster.a.upstream_rq_retry", 0) == 0
    assert outcome.log == "200 UMSDR 4 upstream_max_stream_duration_reached"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("retry_on", ["5xx", "reset", "gateway-error"])
def test_the_clusters_max_stream_duration_before_the_head_is_retried_as_a_reset(
        through: Callable[..., Outcome], kind: str, retry_on: str) -> None:
    outcome = through(kind, lambda number: [(STALL if number == 1 else 0.0, WHOLE)],
                      cluster_extra=UPSTREAM_DURATION, route=f", retry_policy: {{retry_on: '{retry_on}', num_retries: 2}}")
    assert outcome.status == 200
    assert outcome.stats["cluster.a.upstream_rq_max_duration_reached"] == 1
    assert outcome.stats["cluster.a.upstream_rq_retry"] == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("retry_on", "flags"), [("connect-failure", "UMSDR"), ("5xx", "URX,UMSDR")])
def test_the_clusters_max_stream_duration_not_retried_gets_504(
        through: Callable[..., Outcome], kind: str, retry_on: str, flags: str) -> None:
    outcome = through(kind, lambda number: [(STALL, WHOLE)], cluster_extra=UPSTREAM_DURATION,
                      route=f", retry_policy: {{retry_on: '{retry_on}', num_retries: 1}}")
    assert outcome.status == 504
    assert outcome.body == b"upstream max stream duration reached"
    assert outcome.stats["cluster.a.upstream_rq_max_duration_reached"] == (2 if flags == "URX,UMSDR" else 1)
    assert outcome.stats.get("cluster.a.upstream_rq_5xx", 0) == 0   # (Envoy charges the cluster no 5xx)
    assert outcome.log == f"504 {flags} 36 upstream_max_stream_duration_reached"


# The stream's max_stream_duration: the connection manager's, or the route's in its place

HCM_DURATION = "          common_http_protocol_options: {max_stream_duration: 0.5s}"


STREAM_BOUNDS: dict[str, dict[str, Any]] = {
    "hcm": {"hcm": HCM_DURATION},
    "route": {"route": ", max_stream_duration: {max_stream_duration: 0.5s}"},
    # the client's grpc-timeout, under the route's grpc_timeout_header_max
    "grpc-timeout": {"route": ", max_stream_duration: {max_stream_duration: 5s, grpc_timeout_header_max: 10s}",
                     "request": b"GET / HTTP/1.1\r\nhost: x\r\ngrpc-timeout: 500m\r\n\r\n"},
}


@pytest.mark.parametrize(("kind", "pooled"), PATHS)
@pytest.mark.parametrize("where", list(STREAM_BOUNDS))
def test_the_streams_max_stream_duration_cuts_a_response_body_in_flight(
        through: Callable[..., Outcome], kind: str, pooled: bool, where: str) -> None:
    outcome = through(kind, _stalls_after((0.0, HEAD + b"abc")), pooled=pooled, **STREAM_BOUNDS[where])
    assert outcome.body == b"abc"
    assert outcome.closed
    assert 1.4 < outcome.elapsed < 3.0
    assert outcome.stats["http.main.downstream_rq_max_duration_reached"] == 1
    assert outcome.log == "200 - 3 max_duration_timeout"   # (no flag, in Envoy)


@pytest.mark.parametrize("kind", KINDS)
def test_the_connection_managers_max_stream_duration_bounds_the_wait_for_a_head(
        through: Callable[..., Outcome], kind: str) -> None:
    outcome = through(kind, lambda number: [(STALL, WHOLE)], hcm=HCM_DURATION, route=", timeout: 1s")
    assert outcome.status == 504
    assert outcome.body == b"downstream duration timeout"
    assert 0.45 < outcome.elapsed < 2.0
    assert outcome.stats["http.main.downstream_rq_max_duration_reached"] == 1
    assert outcome.log == "504 - 27 max_duration_timeout"


@pytest.mark.parametrize("kind", KINDS)
def test_a_routes_max_stream_duration_replaces_the_connection_managers(
        through: Callable[..., Outcome], kind: str) -> None:
    """The route's 0 (no bound) wins over the connection manager's 0.5 s."""
    outcome = through(kind, lambda number: [(1.0, WHOLE)], hcm=HCM_DURATION,
                      route=", max_stream_duration: {max_stream_duration: 0s}")
    assert outcome.status == 200
    assert outcome.log == "200 - 10 via_upstream"


# Retries exhausted: URX, before the failure's own flag


@pytest.mark.parametrize("kind", KINDS)
def test_retries_exhausted_on_resets_log_urx_before_the_reset(
        through: Callable[..., Outcome], kind: str) -> None:
    outcome = through(kind, lambda number: [(0.0, None)],   # closed unanswered
                      route=", retry_policy: {retry_on: 'reset', num_retries: 1}")
    assert outcome.status == 503
    assert outcome.log.startswith("503 URX,UC ")
    assert outcome.stats["cluster.a.upstream_rq_retry_limit_exceeded"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_retriable_status_returned_when_retries_are_exhausted_is_logged_urx(
        through: Callable[..., Outcome], kind: str) -> None:
    outcome = through(kind, lambda number: [(0.0, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")],
                      route=", retry_policy: {retry_on: 5xx, num_retries: 1}")
    assert outcome.status == 503
    assert outcome.log == "503 URX 4 via_upstream"
    assert outcome.stats["cluster.a.upstream_rq_retry_limit_exceeded"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_failure_the_policy_does_not_retry_is_not_logged_urx_after_a_retry(
        through: Callable[..., Outcome], kind: str) -> None:
    """A 503 is retried; the retry's reset is not one `retriable-status-codes` retries."""
    outcome = through(kind, lambda number: [(0.0, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")]
                      if number == 1 else [(0.0, None)],
                      route=", retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [503], num_retries: 3}")
    assert outcome.status == 503
    assert outcome.log.startswith("503 UC ")
    assert outcome.stats.get("cluster.a.upstream_rq_retry_limit_exceeded", 0) == 0


# The connection manager's request timeouts end with the request


@pytest.mark.parametrize(("kind", "pooled"), PATHS)
def test_a_response_body_streaming_past_the_request_timeout_is_not_cut(
        through: Callable[..., Outcome], kind: str, pooled: bool) -> None:
    outcome = through(kind, lambda number: [(0.0, HEAD + b"abc"), (1.0, b"defghij")], pooled=pooled,
                      hcm="          request_timeout: 0.4s\n          request_headers_timeout: 0.3s")
    assert outcome.body == b"abcdefghij"
    assert outcome.stats.get("http.main.downstream_rq_timeout", 0) == 0
    assert outcome.log == "200 - 10 via_upstream"


# Draining


@pytest.mark.parametrize("kind", KINDS)
def test_a_draining_connection_lets_a_streaming_response_finish_past_its_drain_timeout(
        through: Callable[..., Outcome], kind: str) -> None:
    """max_connection_duration starts the drain mid-body; drain_timeout passes while the body
    still streams: the response completes, and only then does the connection close."""
    slow = [(0.0, HEAD + b"01")] + [(0.2, bytes([48 + digit])) for digit in range(2, 10)]
    outcome = through(kind, lambda number: slow, hcm="          common_http_protocol_options: "
                      "{max_connection_duration: 0.3s}\n          drain_timeout: 0.3s")
    assert outcome.body == b"0123456789"
    assert outcome.elapsed > 1.5
    assert outcome.stats["http.main.downstream_cx_max_duration_reached"] == 1
    assert outcome.log == "200 - 10 via_upstream"


# Per-try timers and a request body that streams

TRICKLED = {"request": b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
            "body": [(0.3, b"de"), (0.3, b"f"), (0.3, b"ghij")]}   # wholly sent after 0.9 s


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", ["per_try_timeout", "per_try_idle_timeout"])
def test_per_try_timers_start_once_the_request_body_is_sent(
        through: Callable[..., Outcome], kind: str, option: str) -> None:
    """The answer comes 1.3 s after the head, 0.4 s after the body's end: within 0.5 s of it."""
    outcome = through(kind, lambda number: [(1.3, WHOLE)], **TRICKLED,
                      route=f", retry_policy: {{retry_on: retriable-4xx, num_retries: 1, {option}: 0.5s}}")
    assert outcome.status == 200
    assert outcome.log == "200 - 10 via_upstream"
    # the upstream's service time counts from the request's end too
    service_time = next(line for line in outcome.response.split(b"\r\n")
                        if line.startswith(b"x-envoy-upstream-service-time: "))
    assert 250 < int(service_time.split(b": ")[1]) < 700


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", ["per_try_timeout", "per_try_idle_timeout"])
def test_per_try_timers_run_from_the_end_of_the_request_body(
        through: Callable[..., Outcome], kind: str, option: str) -> None:
    outcome = through(kind, lambda number: [(STALL, WHOLE)], **TRICKLED,
                      route=f", retry_policy: {{retry_on: retriable-4xx, num_retries: 1, {option}: 0.5s}}")
    assert outcome.status == 504
    assert 1.3 < outcome.elapsed < 2.5
    assert outcome.log == f"504 UT 24 upstream_{option}"
