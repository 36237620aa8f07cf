"""Envoy's access log format strings and JSON formats, compiled once at config time.

Rules (Envoy 1.40, envoy.config.core.v3.SubstitutionFormatString):
- a format string is literal text and command operators `%NAME%`, `%NAME(ARGS)%`,
  `%NAME(ARGS):MAX%` (at most MAX characters); `%%` is a literal `%`. Anything else after a
  `%` ("x % y"), an unknown NAME, a parameter where none is taken or a missing one where one
  is required is a configuration error, as in Envoy;
- `%REQ(A?B)%` is request header A, else B; `%RESP(..)%` the response's, `%TRAILER(..)%`
  its trailers (HTTP/1.1 responses relayed here carry none). Repeated header lines are
  joined with ","; `:method`, `:path` (as forwarded, after rewrites), `:authority`,
  `:scheme` are the request's pseudo-headers;
- in text, an absent value is "-" ("" with `omit_empty_values`); Envoy adds no newline to
  a `text_format_source`, the default format ends with one;
- `json_format` is a Struct rendered on one line with its keys sorted (nested Structs too)
  and a newline; a value that is exactly one operator keeps the operator's type (numbers
  for %RESPONSE_CODE%, %BYTES_SENT%, %DURATION%, ...; null when absent), any other
  string is formatted as text; numbers and booleans are copied; with `omit_empty_values`
  keys whose value is absent are left out.

Theory of operation: `compile_text` turns a format string into literal parts and getters
once; per request `TextFormat.format` calls only the getters and joins. A getter reads one
field of a finished request's record (`proxy.http.stream.Stream`) or connection's
(`proxy.access_log_tcp.TcpRecord`) and the loop time at which it ended; both kinds come
from one table (`_OPERATORS`), whose entries know both records — an operator that means
nothing for TCP (%REQ(..)%, %RESPONSE_CODE_DETAILS% ...) is absent there, as in Envoy.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.struct_pb2 import Struct, Value

from proxy.config_error import ConfigError

FieldValue = str | int | None
Getter = Callable[[Any, float], FieldValue]   # (record, loop time at the end) -> value

# Envoy's default format (file, stdout and stderr loggers without log_format).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')

# Envoy's command syntax: NAME, optional (ARGS) without ")", optional :MAX, closing %.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(\(([^)]*)\))?(:([0-9]+))?%")


# -- field getters -------------------------------------------------------------------------
# Each takes (record, end) where `record` is a Stream (HTTP) or a TcpRecord (TCP); a TCP
# record answers the HTTP-only fields with None through its class attributes.

def _address(address: tuple[str, int] | None) -> str | None:
    if not address:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address_ip(address: tuple[str, int] | None) -> str | None:
    return address[0] if address else None


def _address_port(address: tuple[str, int] | None) -> str | None:
    return str(address[1]) if address else None


def _duration(record: Any, end: float) -> FieldValue:
    return int((end - record.start) * 1000)


def _protocol(record: Any, end: float) -> FieldValue:
    version = record.version
    return f"HTTP/{version}" if version else None


def _response_code(record: Any, end: float) -> FieldValue:
    return record.status


def _response_flags(record: Any, end: float) -> FieldValue:
    return record.response_flags()


def _details(record: Any, end: float) -> FieldValue:
    return record.response_code_details()


def _bytes_received(record: Any, end: float) -> FieldValue:
    return record.bytes_received()


def _bytes_sent(record: Any, end: float) -> FieldValue:
    return record.bytes_sent


def _upstream_host(record: Any, end: float) -> FieldValue:
    upstream = record.upstream
    return None if upstream == "-" else upstream


def _upstream_cluster(record: Any, end: float) -> FieldValue:
    return record.cluster_name()


def _upstream_local(record: Any, end: float) -> FieldValue:
    return _address(record.upstream_local())


def _downstream_local(record: Any, end: float) -> FieldValue:
    return _address(record.downstream_local)


def _downstream_local_ip(record: Any, end: float) -> FieldValue:
    return _address_ip(record.downstream_local)


def _downstream_local_port(record: Any, end: float) -> FieldValue:
    return _address_port(record.downstream_local)


def _downstream_remote(record: Any, end: float) -> FieldValue:
    return _address(record.remote_address())


def _downstream_remote_ip(record: Any, end: float) -> FieldValue:
    return _address_ip(record.remote_address())


def _downstream_direct_remote(record: Any, end: float) -> FieldValue:
    return _address(record.downstream_remote)


def _downstream_direct_remote_ip(record: Any, end: float) -> FieldValue:
    return _address_ip(record.downstream_remote)


def _server_name(record: Any, end: float) -> FieldValue:
    return record.requested_server_name() or None


def _route_name(record: Any, end: float) -> FieldValue:
    return record.route_name() or None


def _transport_failure(record: Any, end: float) -> FieldValue:
    return record.transport_failure_reason()


def _nothing(record: Any, end: float) -> FieldValue:
    """Fields tulle-proxy never has a value for (its filters produce no connection
    termination details; a downstream TLS failure ends the connection before any request)."""
    return None


def _start_time(spec: str) -> Getter:
    """%START_TIME(FORMAT)%: strftime in UTC plus Envoy's %s (epoch seconds) and %f, %1f ..
    %9f (fractional seconds, 9 digits for %f); without FORMAT, Envoy's ISO 8601 with
    milliseconds."""
    pieces = re.split(r"(%[1-9]?f|%s)", spec or "%Y-%m-%dT%H:%M:%S.%3fZ")

    def start_time(record: Any, end: float) -> FieldValue:
        wall = time.time() - (end - record.start)
        seconds = int(wall)
        when = time.gmtime(seconds)
        nanos = int((wall - seconds) * 1e9)
        out = []
        for piece in pieces:
            if piece == "%s":
                out.append(str(seconds))
            elif piece.endswith("f") and piece.startswith("%") and len(piece) <= 3:
                digits = int(piece[1]) if len(piece) == 3 else 9
                out.append(f"{nanos:09d}"[:digits])
            elif piece:
                out.append(time.strftime(piece, when))
        return "".join(out)
    return start_time


def _header_getter(kind: str, args: str, path: str) -> Getter:
    names = args.split("?")
    if len(names) > 2:
        raise ConfigError(path, f"more than 1 alternative header specified in {kind}({args})")
    first = names[0].lower()
    second = names[1].lower() if len(names) == 2 else None
    if not first or second == "":
        raise ConfigError(path, f"{kind}({args}) names an empty header")
    lookup = "request_header" if kind == "REQ" else "response_header" if kind == "RESP" else "trailer"

    if second is None:
        def header(record: Any, end: float) -> FieldValue:
            return getattr(record, lookup)(first)
        return header

    def header_or_alternative(record: Any, end: float) -> FieldValue:
        read = getattr(record, lookup)
        value = read(first)
        return value if value is not None else read(second)
    return header_or_alternative


# operator name -> getter (operators without parameters)
_SIMPLE: dict[str, Getter] = {
    "DURATION": _duration,
    "PROTOCOL": _protocol,
    "RESPONSE_CODE": _response_code,
    "RESPONSE_FLAGS": _response_flags,
    "RESPONSE_FLAGS_LONG": _response_flags,
    "RESPONSE_CODE_DETAILS": _details,
    "CONNECTION_TERMINATION_DETAILS": _nothing,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _transport_failure,
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON": _nothing,
    "BYTES_RECEIVED": _bytes_received,
    "BYTES_SENT": _bytes_sent,
    "UPSTREAM_HOST": _upstream_host,
    "UPSTREAM_REMOTE_ADDRESS": _upstream_host,
    "UPSTREAM_CLUSTER": _upstream_cluster,
    "UPSTREAM_CLUSTER_RAW": _upstream_cluster,
    "UPSTREAM_LOCAL_ADDRESS": _upstream_local,
    "DOWNSTREAM_LOCAL_ADDRESS": _downstream_local,
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _downstream_local_ip,
    "DOWNSTREAM_LOCAL_PORT": _downstream_local_port,
    "DOWNSTREAM_REMOTE_ADDRESS": _downstream_remote,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _downstream_remote_ip,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _downstream_direct_remote,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _downstream_direct_remote_ip,
    "REQUESTED_SERVER_NAME": _server_name,
    "ROUTE_NAME": _route_name,
}
_INTEGER = frozenset(("DURATION", "RESPONSE_CODE", "BYTES_RECEIVED", "BYTES_SENT"))
_WITH_PARAMETERS = frozenset(("REQ", "RESP", "TRAILER", "START_TIME"))


def compile_command(name: str, args: str | None, path: str) -> Getter:
    """The getter of one command operator (ConfigError naming it when it is not one)."""
    if name in _WITH_PARAMETERS:
        if name == "START_TIME":
            return _start_time(args or "")
        if not args:
            raise ConfigError(path, f"{name} requires parameters")
        return _header_getter(name, args, path)
    getter = _SIMPLE.get(name)
    if getter is None:
        raise ConfigError(path, f"command operator %{name}% is not supported by tulle-proxy")
    if args is not None:
        raise ConfigError(path, f"{name} does not take any parameters or length")
    return getter


def _truncated(getter: Getter, limit: int) -> Getter:
    def truncated(record: Any, end: float) -> FieldValue:
        value = getter(record, end)
        if value is None:
            return None
        return (value if isinstance(value, str) else str(value))[:limit]
    return truncated


def _parse(text: str, path: str) -> tuple[list[str], list[tuple[str, Getter]]]:
    """Literal parts (one more than the commands) and (name, getter) per command."""
    literals: list[str] = []
    commands: list[tuple[str, Getter]] = []
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
        name, args, limit = match.group(1), match.group(3), match.group(5)
        if limit is not None and name in _SIMPLE:
            raise ConfigError(path, f"{name} does not take any parameters or length")
        getter = compile_command(name, args, path)
        if limit is not None:
            getter = _truncated(getter, int(limit))
            name = ""   # a truncated value is a string
        literals.append("".join(current))
        current = []
        commands.append((name, getter))
        position = match.end()
    literals.append("".join(current))
    return literals, commands


@dataclass(frozen=True, slots=True)
class TextFormat:
    """A compiled format string: literals[0] getter[0] literals[1] ... literals[-1]."""

    literals: tuple[str, ...]
    getters: tuple[Getter, ...]
    absent: str = "-"

    def format(self, record: Any, end: float) -> str:
        literals = self.literals
        absent = self.absent
        out = [literals[0]]
        append = out.append
        index = 1
        for getter in self.getters:
            value = getter(record, end)
            append(absent if value is None else value if value.__class__ is str else str(value))
            append(literals[index])
            index += 1
        return "".join(out)


def compile_text(text: str, path: str, omit_empty_values: bool = False) -> TextFormat:
    literals, commands = _parse(text, path)
    return TextFormat(tuple(literals), tuple(getter for _, getter in commands),
                      "" if omit_empty_values else "-")


_json_string = json.JSONEncoder(ensure_ascii=False).encode


def _json_value(value: FieldValue) -> str:
    if value is None:
        return "null"
    if value.__class__ is int:
        return str(value)
    return _json_string(value)


@dataclass(frozen=True, slots=True)
class _Typed:
    """A JSON value that is exactly one operator: the operator's own type."""

    getter: Getter
    integer: bool

    def value(self, record: Any, end: float) -> FieldValue:
        value = self.getter(record, end)
        if value is None or self.integer or value.__class__ is str:
            return value
        return str(value)


@dataclass(frozen=True, slots=True)
class _Formatted:
    """A JSON string value with literal text or several operators."""

    text: TextFormat

    def value(self, record: Any, end: float) -> FieldValue:
        return self.text.format(record, end)


JsonNode = dict[str, "JsonNode"] | _Typed | _Formatted | str   # str: a fixed JSON fragment


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """A compiled json_format: a tree of fixed fragments and values, keys sorted."""

    root: dict[str, JsonNode]
    omit_empty_values: bool

    def format(self, record: Any, end: float) -> str:
        out: list[str] = []
        self._render(self.root, record, end, out)
        out.append("\n")
        return "".join(out)

    def _render(self, node: dict[str, JsonNode], record: Any, end: float, out: list[str]) -> None:
        append = out.append
        append("{")
        first = True
        for key, child in node.items():
            if isinstance(child, dict):
                fragment: list[str] = []
                self._render(child, record, end, fragment)
                rendered = "".join(fragment)
            elif isinstance(child, str):
                rendered = child
            else:
                value = child.value(record, end)
                if value is None and self.omit_empty_values:
                    continue
                rendered = _json_value(value)
            if not first:
                append(",")
            first = False
            append(_json_string(key))
            append(":")
            append(rendered)
        append("}")


def compile_json(struct: Struct, path: str, omit_empty_values: bool = False) -> JsonFormat:
    return JsonFormat(_compile_struct(struct, path, omit_empty_values), omit_empty_values)


def _compile_struct(struct: Struct, path: str, omit: bool) -> dict[str, JsonNode]:
    node: dict[str, JsonNode] = {}
    for key in sorted(struct.fields):
        node[key] = _compile_value(struct.fields[key], f"{path}.{key}", omit)
    return node


def _compile_value(value: Value, path: str, omit: bool) -> JsonNode:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _compile_struct(value.struct_value, path, omit)
    if kind == "number_value":
        # Envoy: a whole number stays a number, any other becomes a string
        number = value.number_value
        return str(int(number)) if number.is_integer() else _json_string(repr(number))
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "null_value":
        return "null"
    if kind != "string_value":
        raise ConfigError(path, f"{kind} values are not supported in json_format")
    literals, commands = _parse(value.string_value, path)
    if not commands:
        return _json_string(literals[0])
    if len(commands) == 1 and literals == ["", ""]:
        name, getter = commands[0]
        return _Typed(getter, name in _INTEGER)
    return _Formatted(TextFormat(tuple(literals), tuple(getter for _, getter in commands),
                                 "" if omit else "-"))
