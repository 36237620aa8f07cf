"""Access logs with Istio's text and JSON formats: tulle-proxy writes the same lines as Envoy
for the same config and traffic, field by field (times, durations, request ids and
ephemeral ports aside). One run of each proxy serves every case below."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.access_log_format import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT
from tests.proxy.running import (
    RecordingUpstream,
    cluster,
    exchange,
    free_port,
    hcm_bootstrap,
    running_proxy,
    silent_upstream,
)

ISTIO_TEXT = ISTIO_TEXT_FORMAT
ISTIO_JSON = {
    **ISTIO_JSON_FORMAT,
    # beyond Istio's: typed literals, nesting, truncation, escapes, START_TIME formats
    "nested": {"z": 1.5, "a": True, "agent3": "%REQ(USER-AGENT):3%", "text": "%% of %PROTOCOL%"},
    "epoch": "%START_TIME(%s)%",
    "content_length": "%RESP(CONTENT-LENGTH)%",
}

REQUESTS = [
    ("proxied", b"GET /logged?q=1 HTTP/1.1\r\nhost: example.com\r\nuser-agent: tester\r\n\r\n"),
    ("body and xff", b"POST /upload HTTP/1.1\r\nhost: example.com\r\ncontent-length: 5\r\n"
                     b"x-forwarded-for: 10.1.2.3\r\n\r\nhello"),
    ("rewritten", b"GET /old/page HTTP/1.1\r\nhost: example.com\r\n\r\n"),
    ("direct response", b"GET /direct HTTP/1.1\r\nhost: example.com\r\n\r\n"),
    ("redirect", b"GET /moved HTTP/1.1\r\nhost: example.com\r\n\r\n"),
    ("no route", b"GET / HTTP/1.1\r\nhost: nowhere.test\r\n\r\n"),
    ("refused upstream", b"GET /refused HTTP/1.1\r\nhost: example.com\r\n\r\n"),
    ("upstream timeout", b"GET /slow HTTP/1.1\r\nhost: example.com\r\n\r\n"),
]

# values that differ between any two runs
VOLATILE_TEXT = [
    (re.compile(r"^\[[0-9T:.-]+Z\]"), "[TIME]"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "ID"),
    (re.compile(r"127\.0\.0\.1:[1-9]\d*"), "127.0.0.1:PORT"),
]
TIMINGS = ("duration", "upstream_service_time")


def run(kind: str, tmp_path: Path) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    upstream = RecordingUpstream()
    port, refused = free_port(), free_port()
    text_log, json_log = tmp_path / f"{kind}-text.log", tmp_path / f"{kind}-json.log"
    omit_log = tmp_path / f"{kind}-json-omit.log"
    with silent_upstream() as silent:
        config = hcm_bootstrap(port, """              - {name: direct, match: {path: /direct}, direct_response: {status: 200, body: {inline_string: hi}}}
              - {match: {path: /moved}, redirect: {path_redirect: /new}}
              - {name: old, match: {prefix: /old/}, route: {cluster: a, prefix_rewrite: /new/}}
              - {match: {path: /refused}, route: {cluster: refused}}
              - {match: {path: /slow}, route: {cluster: silent, timeout: 0.3s}}
              - {name: default, match: {prefix: /}, route: {cluster: a}}""",
                               "\n".join((cluster("a", upstream.port), cluster("refused", refused),
                                          cluster("silent", silent))),
                               f"""          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {text_log}
              log_format: {{text_format_source: {{inline_string: {json.dumps(ISTIO_TEXT)}}}}}
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {json_log}
              log_format: {{json_format: {json.dumps(ISTIO_JSON)}}}
          - name: envoy.access_loggers.file
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {omit_log}
              log_format: {{json_format: {json.dumps(ISTIO_JSON)}, omit_empty_values: true}}""", domains="[example.com]")
        try:
            with running_proxy(kind, config, port, tmp_path):
                for _, request in REQUESTS:
                    exchange(port, request.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
                deadline = time.monotonic() + 10   # both flush about once a second
                while time.monotonic() < deadline and (
                        not json_log.exists() or len(json_log.read_text().splitlines()) < len(REQUESTS)):
                    time.sleep(0.1)
        finally:
            upstream.close()
    return text_log.read_text().splitlines(keepends=True), [
        json.loads(line) for line in json_log.read_text().splitlines()], [
        json.loads(line) for line in omit_log.read_text().splitlines()]


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("access-log-formats")
    return {kind: run(kind, tmp_path) for kind in ("envoy", "tulle")}


def normalised(line: str) -> str:
    for pattern, replacement in VOLATILE_TEXT:
        line = pattern.sub(replacement, line)
    # DURATION and the service time: the 4th and 5th numbers after the quoted failure reason
    return re.sub(r'(" \d+ \d+) \d+ (\d+|-) "', r"\1 DURATION SERVICE_TIME \"", line)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("index", range(len(REQUESTS)), ids=[name for name, _ in REQUESTS])
def test_istio_text_format_line_matches_envoys(logs: dict[str, Any], index: int) -> None:
    envoy, tulle = logs["envoy"][0], logs["tulle"][0]
    assert len(tulle) == len(envoy) == len(REQUESTS)
    assert normalised(tulle[index]) == normalised(envoy[index])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("index", range(len(REQUESTS)), ids=[name for name, _ in REQUESTS])
def test_istio_json_format_line_matches_envoys(logs: dict[str, Any], index: int) -> None:
    envoy, tulle = logs["envoy"][1][index], logs["tulle"][1][index]
    assert list(tulle) == list(envoy)   # the same keys, in the same (sorted) order
    for key, value in envoy.items():
        if key in TIMINGS or key in ("start_time", "epoch"):
            assert type(tulle[key]) is type(value), key
        elif isinstance(value, str):
            pattern, replacement = VOLATILE_TEXT[1] if key == "request_id" else VOLATILE_TEXT[2]
            assert pattern.sub(replacement, tulle[key]) == pattern.sub(replacement, value), key
        else:
            assert tulle[key] == value, key
    assert abs(float(tulle["epoch"]) - float(envoy["epoch"])) < 60


@pytest.mark.timeout(90)
@pytest.mark.parametrize("index", range(len(REQUESTS)), ids=[name for name, _ in REQUESTS])
def test_omit_empty_values_leaves_out_the_same_keys_as_envoy(logs: dict[str, Any], index: int) -> None:
    envoy, tulle = logs["envoy"][2][index], logs["tulle"][2][index]
    assert list(tulle) == list(envoy)
    assert None not in envoy.values()
