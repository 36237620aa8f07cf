"""Envoy's access log format strings and JSON formats: parsed at config time, compiled once
per logger into literal parts and field getters.

Rules (Envoy 1.40, envoy.config.core.v3.SubstitutionFormatString):
- a format string is literal text and command operators `%NAME%`, `%NAME(ARGS)%`,
  `%NAME(ARGS):MAX%` (at most MAX characters); `%%` is a literal `%`. Anything else after a
  `%` ("x % y"), an unknown NAME, a parameter or length where none is taken, or a missing
  parameter where one is required, is a configuration error, as in Envoy;
- `%REQ(A?B)%` is request header A, else B; `%RESP(..)%` the response's, `%TRAILER(..)%`
  its trailers. Repeated header lines are joined with ",";
- in text, an absent value is "-" ("" with `omit_empty_values`); Envoy adds no newline to
  a `text_format_source` (its default format ends with one);
- `json_format` is a Struct rendered on one line with its keys sorted (nested Structs too)
  and a newline; a value that is exactly one operator keeps the operator's type (numbers
  for %RESPONSE_CODE%, %BYTES_SENT%, %DURATION%, ...; null when absent), any other string is
  formatted as text; whole numbers and booleans are copied, other numbers become strings
  (Envoy's rendering); with `omit_empty_values` keys whose value is absent are left out.

Theory of operation: `parse_text` / `parse_json` validate a format and keep it as literals
and `Command`s (what an operator is, not how to read it). A logger compiles its format with
the operator table of what it logs (`Operators`: HTTP requests in proxy/access_log.py,
TCP connections in proxy/tcp_access_log.py), once, into a `Formatter`: a tuple of literal
parts and a tuple of getters, each getter reading one field of a finished record and the
loop time at which it ended. Per request only the getters run and one join builds the line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Final

from google.protobuf.struct_pb2 import Struct, Value

from proxy.config_error import ConfigError

FieldValue = str | int | None
Getter = Callable[[Any, float], FieldValue]   # (record, loop time at its end) -> value
# An operator's getter for its parameter (REQ's header names, START_TIME's format, or None).
Operators = Mapping[str, Callable[[str | None], Getter]]

# The operators tulle-proxy knows: name -> whether it takes a parameter ("no", "yes", "may").
OPERATORS = {
    "START_TIME": "may", "REQ": "yes", "RESP": "yes", "TRAILER": "yes",
    "DURATION": "no", "PROTOCOL": "no", "RESPONSE_CODE": "no", "RESPONSE_FLAGS": "no",
    "RESPONSE_CODE_DETAILS": "no", "CONNECTION_TERMINATION_DETAILS": "no",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "no", "DOWNSTREAM_TRANSPORT_FAILURE_REASON": "no",
    "BYTES_RECEIVED": "no", "BYTES_SENT": "no", "UPSTREAM_HOST": "no",
    "UPSTREAM_REMOTE_ADDRESS": "no", "UPSTREAM_CLUSTER": "no", "UPSTREAM_CLUSTER_RAW": "no",
    "UPSTREAM_LOCAL_ADDRESS": "no", "DOWNSTREAM_LOCAL_ADDRESS": "no",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": "no", "DOWNSTREAM_LOCAL_PORT": "no",
    "DOWNSTREAM_REMOTE_ADDRESS": "no", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": "no",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": "no", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": "no",
    "REQUESTED_SERVER_NAME": "no", "ROUTE_NAME": "no",
}
# Operators whose value is a number (a JSON value that is only one of them stays a number).
INTEGER_OPERATORS = frozenset(("DURATION", "RESPONSE_CODE", "BYTES_RECEIVED", "BYTES_SENT"))

# Envoy's default format (file, stdout and stderr loggers without log_format).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')

# Istio's sidecar access log formats (meshConfig.accessLogFormat unset, accessLogEncoding
# TEXT or JSON): what an operator coming from Istio configures, and so what bench/ measures
# and the tests compare with Envoy's lines.
ISTIO_TEXT_FORMAT: Final = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n")
ISTIO_JSON_FORMAT: Final[Mapping[str, str]] = {
    "start_time": "%START_TIME%", "route_name": "%ROUTE_NAME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%", "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%", "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}

# Envoy's command syntax: NAME, optional (ARGS) without ")", optional :MAX, closing %.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(\(([^)]*)\))?(:([0-9]+))?%")


# -- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: str | None     # between the parentheses, None without them
    limit: int | None    # :MAX


@dataclass(frozen=True, slots=True)
class TextTemplate:
    """literals[0] commands[0] literals[1] ... literals[-1]."""

    literals: tuple[str, ...]
    commands: tuple[Command, ...]


# A JSON format's tree: a nested Struct (dict), a fixed JSON fragment (str) or a template.
JsonTree = dict[str, "JsonTree"] | str | TextTemplate


@dataclass(frozen=True, slots=True)
class LogFormat:
    template: TextTemplate | dict[str, JsonTree]   # a dict: a json_format
    omit_empty_values: bool = False


def parse_text(text: str, path: str) -> TextTemplate:
    literals: list[str] = []
    commands: list[Command] = []
    current: list[str] = []
    position = 0
    while True:
        percent = text.find("%", position)
        if percent < 0:
            current.append(text[position:])
            break
        current.append(text[position:percent])
        if text.startswith("%%", percent):
            current.append("%")
            position = percent + 2
            continue
        match = _COMMAND.match(text, percent)
        if match is None:
            raise ConfigError(path, f"couldn't find a valid command at position {percent} of {text!r}")
        command = Command(match.group(1), match.group(3), int(match.group(5)) if match.group(5) else None)
        _check(command, path)
        literals.append("".join(current))
        current = []
        commands.append(command)
        position = match.end()
    literals.append("".join(current))
    return TextTemplate(tuple(literals), tuple(commands))


def _check(command: Command, path: str) -> None:
    arity = OPERATORS.get(command.name)
    if arity is None:
        raise ConfigError(path, f"command operator %{command.name}% is not supported by tulle-proxy")
    if arity == "no" and (command.args is not None or command.limit is not None):
        raise ConfigError(path, f"{command.name} does not take any parameters or length")
    if arity == "yes" and not command.args:
        raise ConfigError(path, f"{command.name} requires parameters")
    if command.name in ("REQ", "RESP", "TRAILER"):
        assert command.args is not None
        names = command.args.split("?")
        if len(names) > 2:
            raise ConfigError(path, f"more than 1 alternative header specified in {command.name}({command.args})")
        if not all(names):
            raise ConfigError(path, f"{command.name}({command.args}) names an empty header")


def parse_json(struct: Struct, path: str) -> dict[str, JsonTree]:
    return {key: _parse_value(struct.fields[key], f"{path}.{key}") for key in sorted(struct.fields)}


def _parse_value(value: Value, path: str) -> JsonTree:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return parse_json(value.struct_value, path)
    if kind == "number_value":
        number = value.number_value   # Envoy: a whole number stays a number, any other a string
        return str(int(number)) if number.is_integer() else encode_basestring(repr(number))
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "null_value":
        return "null"
    if kind != "string_value":
        raise ConfigError(path, f"{kind} values are not supported in json_format")
    template = parse_text(value.string_value, path)
    return template if template.commands else encode_basestring(template.literals[0])


# -- compiling and formatting ----------------------------------------------------------------

class Formatter:
    """A LogFormat compiled with one operator table: `format(record, end)` is the line."""

    __slots__ = ("_absent", "_first", "_getters", "_literals", "_pairs", "_tree")

    def __init__(self, log_format: LogFormat, operators: Operators) -> None:
        self._absent = "" if log_format.omit_empty_values else "-"
        self._tree: dict[str, _JsonNode] | None = None
        template = log_format.template
        if isinstance(template, TextTemplate):
            self._literals = template.literals
            self._getters = tuple(_getter(command, operators) for command in template.commands)
        elif log_format.omit_empty_values:   # keys come and go: rendered per record
            self._literals, self._getters = ("", "\n"), (self._render_tree,)
            self._tree = _json_nodes(template, operators, self._absent)
        else:   # a fixed shape: the JSON text between the values is literal
            literals: list[str] = [""]
            getters: list[Getter] = []
            _flatten(template, operators, literals, getters)
            literals[-1] += "\n"
            self._literals, self._getters = tuple(literals), tuple(getters)
        # each getter with the literal after it
        self._first = self._literals[0]
        self._pairs = tuple(zip(self._getters, self._literals[1:], strict=True))

    def format(self, record: Any, end: float) -> str:
        absent = self._absent
        out = [self._first]
        append = out.append
        for getter, literal in self._pairs:
            value = getter(record, end)
            append(absent if value is None else value if value.__class__ is str else str(value))
            append(literal)
        return "".join(out)

    def _render_tree(self, record: Any, end: float) -> str:
        assert self._tree is not None
        return _render(self._tree, record, end)


def _getter(command: Command, operators: Operators) -> Getter:
    getter = operators[command.name](command.args)
    limit = command.limit
    if limit is None:
        return getter

    def truncated(record: Any, end: float) -> FieldValue:
        value = getter(record, end)
        return None if value is None else (value if value.__class__ is str else str(value))[:limit]
    return truncated


def _json_getter(template: TextTemplate, operators: Operators, absent: str) -> Getter:
    """A JSON value's getter, giving JSON text (always a str)."""
    if len(template.commands) == 1 and template.literals == ("", ""):
        command = template.commands[0]
        getter = _getter(command, operators)
        typed = command.name in INTEGER_OPERATORS and command.limit is None

        def single(record: Any, end: float) -> str:
            value = getter(record, end)
            if value is None:
                return "null"
            if value.__class__ is int:
                return str(value) if typed else encode_basestring(str(value))
            return encode_basestring(value)  # type: ignore[arg-type]
        return single
    text = Formatter(LogFormat(template, absent == ""), operators)

    def formatted(record: Any, end: float) -> str:
        return encode_basestring(text.format(record, end))
    return formatted


def _flatten(tree: dict[str, JsonTree], operators: Operators, literals: list[str],
             getters: list[Getter]) -> None:
    literals[-1] += "{"
    for position, (key, value) in enumerate(tree.items()):
        literals[-1] += ("," if position else "") + encode_basestring(key) + ":"
        if isinstance(value, dict):
            _flatten(value, operators, literals, getters)
        elif isinstance(value, str):
            literals[-1] += value
        else:
            getters.append(_json_getter(value, operators, "-"))
            literals.append("")
    literals[-1] += "}"


# With omit_empty_values: (key's JSON text with its colon, a nested tree | fixed JSON | getter)
_JsonNode = tuple[str, "dict[str, _JsonNode] | str | Getter"]


def _json_nodes(tree: dict[str, JsonTree], operators: Operators, absent: str) -> dict[str, _JsonNode]:
    nodes: dict[str, _JsonNode] = {}
    for key, value in tree.items():
        prefix = encode_basestring(key) + ":"
        if isinstance(value, dict):
            nodes[key] = (prefix, _json_nodes(value, operators, absent))
        elif isinstance(value, str):
            nodes[key] = (prefix, value)
        else:
            nodes[key] = (prefix, _json_getter(value, operators, absent))
    return nodes


def _render(nodes: dict[str, _JsonNode], record: Any, end: float) -> str:
    parts = []
    for prefix, node in nodes.values():
        if isinstance(node, dict):
            parts.append(prefix + _render(node, record, end))
        elif isinstance(node, str):
            parts.append(prefix + node)
        else:
            rendered = node(record, end)
            if rendered not in ("null", '""'):   # absent (or empty): the key is left out
                parts.append(prefix + str(rendered))
    return "{" + ",".join(parts) + "}"


# -- START_TIME, the one operator every record answers alike -----------------------------------

def start_time(spec: str | None) -> Getter:
    """%START_TIME(FORMAT)% of a record with `start` on the loop clock: strftime in UTC plus
    Envoy's %s (epoch seconds) and %f, %1f .. %9f (fractional seconds, 9 digits for %f);
    without FORMAT, Envoy's ISO 8601 with milliseconds. What depends only on the second is
    formatted once per second."""
    pieces = [piece for piece in re.split(r"(%[1-9]?f|%s)", spec or "%Y-%m-%dT%H:%M:%S.%3fZ") if piece]
    # runs of second-resolution text, separated by fractions (digits)
    runs: list[list[str]] = [[]]
    digits: list[int] = []
    for piece in pieces:
        if re.fullmatch(r"%[1-9]?f", piece):
            digits.append(int(piece[1]) if len(piece) == 3 else 9)
            runs.append([])
        else:
            runs[-1].append(piece)
    cached_second: list[int | None] = [None]
    cached_runs: list[str] = []

    def get(record: Any, end: float) -> FieldValue:
        wall = time.time() - (end - record.start)
        second = int(wall)
        if cached_second[0] != second:
            when = time.gmtime(second)
            cached_runs[:] = ["".join(str(second) if piece == "%s" else time.strftime(piece, when)
                                      for piece in run) for run in runs]
            cached_second[0] = second
        if not digits:
            return cached_runs[0]
        if digits == [3]:   # Envoy's default: milliseconds
            return f"{cached_runs[0]}{int((wall - second) * 1000):03d}{cached_runs[1]}"
        nanos = f"{int((wall - second) * 1e9):09d}"
        if len(digits) == 1:
            return f"{cached_runs[0]}{nanos[:digits[0]]}{cached_runs[1]}"
        out = [cached_runs[0]]
        for count, run in zip(digits, cached_runs[1:], strict=True):
            out.append(nanos[:count])
            out.append(run)
        return "".join(out)
    return get


def absent(_: str | None) -> Getter:
    """An operator the record never has a value for."""
    return _none


def _none(record: Any, end: float) -> FieldValue:
    return None
