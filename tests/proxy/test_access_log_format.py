"""The access log formatter on its own: Envoy's command syntax, compiled once, applied to a
record (the real records are proxy.access_log.HttpRecord and the TCP connection's)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from google.protobuf.struct_pb2 import Struct

from proxy.access_log import AccessLogConfig
from proxy.access_log_format import (
    DEFAULT_FORMAT,
    OPERATORS,
    Command,
    Formatter,
    Getter,
    LogFormat,
    parse_json,
    parse_text,
    start_time,
)
from proxy.config_error import ConfigError


class Record:
    """A finished request: the values the fake operator table below reads."""

    def __init__(self, **values: object) -> None:
        self.start = 100.0
        self.values: dict[str, object] = {
            "PROTOCOL": "HTTP/1.1", "RESPONSE_CODE": 200, "BYTES_RECEIVED": 5, "BYTES_SENT": 12,
            "DURATION": 250, "RESPONSE_FLAGS": "-", "UPSTREAM_HOST": "10.0.0.2:8080",
            "DOWNSTREAM_LOCAL_ADDRESS": "10.0.0.1:80"}
        self.values.update(values)
        self.request = {":method": "GET", ":path": "/a?b", ":authority": "example.com",
                        "user-agent": "curl/8", "x-request-id": "rid"}
        self.response = {"x-envoy-upstream-service-time": "3"}


def field(name: str) -> Callable[[str | None], Getter]:
    return lambda _: lambda record, end: record.values.get(name)


def header(kind: str) -> Callable[[str | None], Getter]:
    def make(args: str | None) -> Getter:
        assert args is not None
        names = args.lower().split("?")

        def get(record: Record, end: float) -> object:
            headers = record.request if kind == "REQ" else record.response
            for name in names:
                if name in headers:
                    return headers[name]
            return None
        return get  # type: ignore[return-value]
    return make


FAKE: dict[str, Callable[[str | None], Getter]] = {name: field(name) for name in OPERATORS}
FAKE.update({"REQ": header("REQ"), "RESP": header("RESP"), "START_TIME": start_time})

END = 100.25   # the request ended 250 ms after it started


def text(fmt: str, record: Record | None = None, omit: bool = False) -> str:
    return Formatter(LogFormat(parse_text(fmt, "f"), omit), FAKE).format(record or Record(), END)


def json_line(fields: dict[str, object], record: Record | None = None, omit: bool = False) -> str:
    struct = Struct()
    struct.update(fields)
    return Formatter(LogFormat(parse_json(struct, "j"), omit), FAKE).format(record or Record(), END)


def test_literal_text_is_kept_and_no_newline_is_added() -> None:
    assert text("plain") == "plain"


def test_double_percent_is_a_literal_percent() -> None:
    assert text("100%% %PROTOCOL%") == "100% HTTP/1.1"


def test_numbers_are_rendered_in_text() -> None:
    assert text("%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%") == "200 5 12 250"


def test_request_header_with_an_alternative() -> None:
    assert text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%") == "/a?b"
    record = Record()
    record.request["x-envoy-original-path"] = "/orig"
    assert text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", record) == "/orig"


def test_header_names_are_case_insensitive() -> None:
    assert text("%REQ(User-Agent)%") == "curl/8"


def test_a_value_is_truncated_to_its_length() -> None:
    assert text("%REQ(USER-AGENT):4%|%RESPONSE_CODE%") == "curl|200"


def test_an_absent_value_is_a_dash() -> None:
    assert text('"%REQ(X-FORWARDED-FOR)%" %ROUTE_NAME% %REQUESTED_SERVER_NAME%') == '"-" - -'


def test_omit_empty_values_leaves_absent_values_empty() -> None:
    assert text('"%REQ(X-FORWARDED-FOR)%"', omit=True) == '""'


def test_start_time_defaults_to_iso_8601_with_milliseconds_in_utc() -> None:
    value = text("%START_TIME%")
    assert len(value) == len("2026-11-26T21:13:28.898Z") and value.endswith("Z")
    parsed = time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    assert abs(time.mktime(parsed) - time.mktime(time.gmtime())) < 120


def test_start_time_takes_strftime_with_epoch_seconds_and_fractions() -> None:
    seconds, fraction, year = text("%START_TIME(%s|%3f|%Y)%").split("|")
    assert abs(int(seconds) - time.time()) < 120
    assert len(fraction) == 3 and fraction.isdigit()
    assert year == time.strftime("%Y", time.gmtime())


def test_the_default_format_is_envoys() -> None:
    line = text(DEFAULT_FORMAT)
    assert line.endswith('"GET /a?b HTTP/1.1" 200 - 5 12 250 3 "-" "curl/8" "rid" "example.com" '
                         '"10.0.0.2:8080"\n')


def test_a_format_is_parsed_once_into_literals_and_commands() -> None:
    template = parse_text("[%PROTOCOL%] %REQ(A?B):4%!", "f")
    assert template.literals == ("[", "] ", "!")
    assert template.commands == (Command("PROTOCOL", None, None), Command("REQ", "A?B", 4))


def test_json_keys_are_sorted_and_single_operators_keep_their_type() -> None:
    line = json_line({"z": "%RESPONSE_CODE%", "a": "%PROTOCOL%", "m": "%DURATION%",
                      "u": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"})
    assert line == '{"a":"HTTP/1.1","m":250,"u":"3","z":200}\n'


def test_json_mixed_strings_are_formatted_as_text() -> None:
    assert json.loads(json_line({"s": "code=%RESPONSE_CODE% via %REQ(X-MISSING)%"})) == {
        "s": "code=200 via -"}


def test_json_absent_values_are_null_or_omitted() -> None:
    assert json.loads(json_line({"x": "%REQ(X-MISSING)%", "y": "ok"})) == {"x": None, "y": "ok"}
    assert json.loads(json_line({"x": "%REQ(X-MISSING)%", "y": "ok"}, omit=True)) == {"y": "ok"}


def test_json_literals_and_nested_structs_are_copied() -> None:
    line = json_line({"n": 5, "f": 1.5, "b": True, "nested": {"k": "%RESPONSE_CODE%", "c": "lit"}})
    # Envoy: a whole number stays a number, a fraction becomes a string
    assert line == '{"b":true,"f":"1.5","n":5,"nested":{"c":"lit","k":200}}\n'


def test_json_strings_are_escaped() -> None:
    record = Record()
    record.request["user-agent"] = 'say "hi"\\'
    assert json.loads(json_line({"ua": "%REQ(USER-AGENT)%"}, record)) == {"ua": 'say "hi"\\'}


@pytest.mark.parametrize(("fmt", "message"), [
    ("x %FOO_BAR% y", r"%FOO_BAR% is not supported"),
    ("x % y", "couldn't find a valid command at position 2"),
    ("%REQ(a?b?c)%", "more than 1 alternative header"),
    ("%DURATION(x)%", "DURATION does not take any parameters or length"),
    ("%DURATION:3%", "DURATION does not take any parameters or length"),
    ("%RESP()%", "RESP requires parameters"),
    ("%REQ(abc)x%", "couldn't find a valid command at position 0"),
])
def test_bad_formats_are_rejected_like_envoy_does(fmt: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        parse_text(fmt, "here.inline_string")
    assert error.value.path == "here.inline_string"


def logger(log_format: dict[str, object]) -> AccessLogConfig:
    from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
    from envoy.extensions.access_loggers.file.v3.file_pb2 import FileAccessLog
    from google.protobuf.json_format import ParseDict

    message = AccessLog(name="envoy.access_loggers.file")
    message.typed_config.Pack(ParseDict({"path": "/dev/null", "log_format": log_format}, FileAccessLog()))
    return AccessLogConfig.from_proto(message, "access_log[0]")


def test_an_unknown_operator_in_a_logger_is_rejected_naming_its_path() -> None:
    with pytest.raises(ConfigError) as error:
        logger({"text_format_source": {"inline_string": "%NOPE%"}})
    assert str(error.value) == ("access_log[0].typed_config.log_format.text_format_source.inline_string: "
                                "command operator %NOPE% is not supported by tulle-proxy")


def test_an_unknown_operator_in_a_json_value_is_rejected_naming_its_key() -> None:
    with pytest.raises(ConfigError) as error:
        logger({"json_format": {"outer": {"inner": "%NOPE%"}}})
    assert error.value.path == "access_log[0].typed_config.log_format.json_format.outer.inner"


@pytest.mark.parametrize(("log_format", "path"), [
    ({"text_format": "x"}, "log_format.text_format"),
    ({"text_format_source": {"filename": "/etc/hosts"}}, "log_format.text_format_source.filename"),
    ({"json_format": {"x": "y"}, "content_type": "text/plain"}, "log_format.content_type"),
    ({"omit_empty_values": True}, "log_format"),
])
def test_unsupported_log_format_fields_are_rejected(log_format: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as error:
        logger(log_format)
    assert error.value.path == f"access_log[0].typed_config.{path}"


TCP_LISTENER = """
static_resources:
  listeners:
  - name: relay
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: relay
          cluster: a
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {text_format_source: {inline_string: "%s"}}
  clusters:
  - name: a
    connect_timeout: 1s
    load_assignment:
      cluster_name: a
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]
"""


def test_a_tcp_proxy_access_log_loads() -> None:
    from proxy.bootstrap import parse_bootstrap

    parse_bootstrap(TCP_LISTENER % "%DOWNSTREAM_REMOTE_ADDRESS% %BYTES_RECEIVED%\\n")


def test_an_unknown_operator_in_a_tcp_proxy_access_log_fails_the_bootstrap() -> None:
    from proxy.bootstrap import parse_bootstrap

    with pytest.raises(ConfigError) as error:
        parse_bootstrap(TCP_LISTENER % "%BYTES_RECEIVED% %UPSTREAM_PEER_CERT%")
    assert str(error.value) == (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log[0]"
        ".typed_config.log_format.text_format_source.inline_string: "
        "command operator %UPSTREAM_PEER_CERT% is not supported by tulle-proxy")


def test_the_http_and_tcp_tables_implement_every_operator() -> None:
    from proxy.access_log import http_operators
    from proxy.tcp_access_log import TCP_OPERATORS

    assert set(http_operators(False)) == set(OPERATORS) == set(TCP_OPERATORS)
    assert set(http_operators(True)) == set(OPERATORS)
