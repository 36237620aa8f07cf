"""Access logs: the file, stdout and stderr loggers with Envoy's formats.

Rules (envoy.config.accesslog.v3.AccessLog with envoy.access_loggers.file / stdout /
stderr): one line per HTTP request when it completes (on the HTTP connection manager) or
per TCP connection when it closes (on tcp_proxy). The line is Envoy's default format
(access_log_format.DEFAULT_FORMAT) unless `log_format` gives `text_format_source`
(`inline_string`) or `json_format`, with `omit_empty_values`; filters, other loggers and
other format fields are rejected at load, naming their path. Lines are buffered and flushed
about a second after they are written, and at exit, as Envoy flushes.

What the operators read of a request (`http_operators`): the request headers as forwarded
(after the connection manager's and the route's changes; `:path` after rewrites, with
x-envoy-original-path beside it), the response head as the connection manager made it (an
upstream's head with x-envoy-upstream-service-time, server, date and the route's headers; a
local reply's own head; without the codec's chunked framing), the SNI a tls_inspector read
(%REQUESTED_SERVER_NAME%), the response flags and Envoy's response code details, and the downstream remote address as
Envoy takes it (the peer with use_remote_address, else the last x-forwarded-for entry).

Theory of operation: the format is parsed at config time (proxy/access_log_format.py) and
compiled with the operator table below when the connection manager makes its writer; at the
end of a request `AccessLogWriter.write` runs each logger's getters on the finished
`Stream`. Nothing runs and nothing is allocated for a listener without access logs.
"""

from __future__ import annotations

import asyncio
import atexit
import ipaddress
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.core.v3.substitution_format_string_pb2 import SubstitutionFormatString
from envoy.extensions.access_loggers.file.v3.file_pb2 import FileAccessLog
from envoy.extensions.access_loggers.stream.v3.stream_pb2 import StderrAccessLog, StdoutAccessLog

from proxy.access_log_format import (
    DEFAULT_FORMAT,
    OPERATORS,
    FieldValue,
    Formatter,
    Getter,
    LogFormat,
    Operators,
    absent,
    parse_json,
    parse_text,
    start_time,
)
from proxy.config_error import ConfigError, reject_unsupported
from proxy.http.response import CODEC_CHUNKED
from proxy.proto_config import join

if TYPE_CHECKING:
    from proxy.http.stream import Stream

_FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_STDOUT = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_STDERR = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


DEFAULT_LOG_FORMAT = LogFormat(parse_text(DEFAULT_FORMAT, "format"))


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    target: str          # "stdout", "stderr" or a file path
    format: LogFormat = DEFAULT_LOG_FORMAT

    @classmethod
    def from_proto(cls, message: AccessLog, path: str) -> AccessLogConfig:
        reject_unsupported(message, path, ("name", "typed_config"))
        type_url = message.typed_config.type_url
        here = join(path, "typed_config")
        if type_url == _FILE:
            logger = FileAccessLog()
            message.typed_config.Unpack(logger)
            reject_unsupported(logger, here, ("path", "log_format"))
            if not logger.path:
                raise ConfigError(join(here, "path"), "must not be empty")
            return cls(logger.path, _log_format(logger, here))
        if type_url in (_STDOUT, _STDERR):
            stream: StdoutAccessLog | StderrAccessLog = StdoutAccessLog() if type_url == _STDOUT else StderrAccessLog()
            message.typed_config.Unpack(stream)
            reject_unsupported(stream, here, ("log_format",))
            return cls("stdout" if type_url == _STDOUT else "stderr", _log_format(stream, here))
        raise ConfigError(here, f"access logger {message.name!r} ({type_url or 'no type'}) is not "
                          "supported (file, stdout, stderr)")


def _log_format(logger: FileAccessLog | StdoutAccessLog | StderrAccessLog, path: str) -> LogFormat:
    if not logger.HasField("log_format"):
        return DEFAULT_LOG_FORMAT
    return log_format_from_proto(logger.log_format, join(path, "log_format"))


def log_format_from_proto(message: SubstitutionFormatString, path: str) -> LogFormat:
    reject_unsupported(message, path, ("text_format_source", "json_format", "omit_empty_values"))
    omit = message.omit_empty_values
    if message.HasField("json_format"):
        return LogFormat(parse_json(message.json_format, join(path, "json_format")), omit)
    if message.HasField("text_format_source"):
        here = join(path, "text_format_source")
        source = message.text_format_source
        reject_unsupported(source, here, ("inline_string",))
        if not source.inline_string:
            raise ConfigError(join(here, "inline_string"), "must not be empty")
        return LogFormat(parse_text(source.inline_string, join(here, "inline_string")), omit)
    raise ConfigError(path, "one of text_format_source or json_format is required")


_PENDING_LIMIT = 512   # lines a logger holds before it writes them out


class AccessLogWriter:
    """The loggers of one connection manager or tcp_proxy, each with its compiled format.
    Lines are held in a list and written out together: about a second after the first
    (the timer is armed only while lines are pending), every _PENDING_LIMIT lines, and at
    exit."""

    def __init__(self, configs: tuple[AccessLogConfig, ...], operators: Operators) -> None:
        self._loggers: list[tuple[Callable[[object, float], str], list[str], IO[str]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        for config in configs:
            if config.target == "stdout":
                stream: IO[str] = sys.stdout
            elif config.target == "stderr":
                stream = sys.stderr
            else:
                stream = open(config.target, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            self._loggers.append((Formatter(config.format, operators).format, [], stream))
        _WRITERS.add(self)

    def write(self, record: object, end: float) -> None:
        """A request (a Stream) or a connection ended at loop time `end`: one line per logger."""
        for format_line, pending, _ in self._loggers:
            pending.append(format_line(record, end))
            if len(pending) >= _PENDING_LIMIT:
                self.flush()
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(1.0, self.flush)

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for _, pending, target in self._loggers:
            if pending:
                target.write("".join(pending))
                pending.clear()
            target.flush()


_WRITERS: weakref.WeakSet[AccessLogWriter] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for writer in list(_WRITERS):
        writer.flush()


# -- what Envoy's command operators read of a finished HTTP request -----------------------------

def http_operators(use_remote_address: bool) -> Operators:
    """The operator table of a connection manager's access logs (records are Streams)."""
    table: dict[str, Callable[[str | None], Getter]] = {name: absent for name in OPERATORS}
    table.update({
        "START_TIME": start_time,
        "REQ": _request_header,
        "RESP": _response_header,
        "DURATION": _fixed(_duration),
        "PROTOCOL": _fixed(_protocol),
        "RESPONSE_CODE": _fixed(_status),
        "RESPONSE_FLAGS": _fixed(_flags),
        "RESPONSE_CODE_DETAILS": _fixed(lambda stream, end: response_code_details(stream)),
        "UPSTREAM_TRANSPORT_FAILURE_REASON": _fixed(lambda stream, end: transport_failure_reason(stream)),
        "BYTES_RECEIVED": _fixed(_bytes_received),
        "BYTES_SENT": _fixed(_bytes_sent),
        "UPSTREAM_HOST": _fixed(_upstream_host),
        "UPSTREAM_REMOTE_ADDRESS": _fixed(_upstream_host),
        "UPSTREAM_CLUSTER": _fixed(_cluster),
        "UPSTREAM_CLUSTER_RAW": _fixed(_cluster),
        "UPSTREAM_LOCAL_ADDRESS": _fixed(_upstream_local),
        "DOWNSTREAM_LOCAL_ADDRESS": _fixed(lambda stream, end: address(stream.downstream_local)),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _fixed(lambda stream, end: stream.downstream_local[0]),
        "DOWNSTREAM_LOCAL_PORT": _fixed(lambda stream, end: str(stream.downstream_local[1])),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _fixed(lambda stream, end: address(stream.downstream_remote)),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _fixed(lambda stream, end: stream.downstream_remote[0]),
        "ROUTE_NAME": _fixed(_route_name),
        "REQUESTED_SERVER_NAME": _fixed(lambda stream, end: stream.conn.server_name or None),
    })
    if use_remote_address:
        table["DOWNSTREAM_REMOTE_ADDRESS"] = table["DOWNSTREAM_DIRECT_REMOTE_ADDRESS"]
        table["DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"] = table["DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT"]
    else:
        table["DOWNSTREAM_REMOTE_ADDRESS"] = _fixed(lambda stream, end: address(_forwarded_remote(stream)))
        table["DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"] = _fixed(lambda stream, end: _forwarded_remote(stream)[0])
    return table


def _fixed(getter: Getter) -> Callable[[str | None], Getter]:
    """An operator without parameters: always this getter."""
    return lambda _: getter


def address(pair: tuple[str, int] | None) -> str | None:
    """Envoy's address string: ip:port, [ipv6]:port (remembered: a connection's addresses
    are logged once per request)."""
    if not pair:
        return None
    text = _ADDRESSES.get(pair)
    if text is None:
        if len(_ADDRESSES) >= 4096:
            _ADDRESSES.clear()
        host = pair[0]
        text = _ADDRESSES[pair] = f"[{host}]:{pair[1]}" if ":" in host else f"{host}:{pair[1]}"
    return text


_ADDRESSES: dict[tuple[str, int], str] = {}


def _duration(stream: Stream, end: float) -> FieldValue:
    return int((end - stream.start) * 1000)


_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}


def _protocol(stream: Stream, end: float) -> FieldValue:
    return _PROTOCOLS.get(stream.version)


def _status(stream: Stream, end: float) -> FieldValue:
    return stream.status


def _flags(stream: Stream, end: float) -> FieldValue:
    return stream.flags if not stream.conn.closed or stream.committed else "DC"


def _bytes_received(stream: Stream, end: float) -> FieldValue:
    return stream.body.size


def _bytes_sent(stream: Stream, end: float) -> FieldValue:
    return stream.bytes_sent


def _upstream_host(stream: Stream, end: float) -> FieldValue:
    upstream = stream.upstream
    return None if upstream == "-" else upstream


def _cluster(stream: Stream, end: float) -> FieldValue:
    cluster = getattr(stream, "cluster", None)
    return cluster.name if cluster is not None else None


def _upstream_local(stream: Stream, end: float) -> FieldValue:
    connection = getattr(stream, "upstream_connection", None)
    transport = connection.transport if connection is not None else None
    return address(transport.get_extra_info("sockname")) if transport is not None else None


def _route_name(stream: Stream, end: float) -> FieldValue:
    selection = getattr(stream, "selection", None)
    return (selection.route.name or None) if selection is not None else None


def _forwarded_remote(stream: Stream) -> tuple[str, int]:
    """Without use_remote_address Envoy takes the last x-forwarded-for entry (port 0) as the
    downstream remote address when it is an IP, else the peer."""
    forwarded = _header_value(stream.headers.items, "x-forwarded-for")
    if forwarded:
        last = forwarded.rsplit(",", 1)[-1].strip()
        try:
            return (str(ipaddress.ip_address(last)), 0)
        except ValueError:
            pass
    return stream.downstream_remote


def _header_value(items: list[tuple[str, str]], name: str) -> str | None:
    """A header's lines joined with "," (one pass, no list)."""
    found = None
    for key, value in items:
        if key == name:
            found = value if found is None else f"{found},{value}"
    return found


_PSEUDO: dict[str, Getter] = {
    ":method": lambda stream, end: stream.method or None,
    ":path": lambda stream, end: getattr(stream, "upstream_target", None) or stream.target or None,
    ":authority": lambda stream, end: _header_value(stream.headers.items, "host"),
    ":scheme": lambda stream, end: "http",
}


def _either(first: Getter, second: Getter | None) -> Getter:
    if second is None:
        return first

    def either(stream: Stream, end: float) -> FieldValue:
        value = first(stream, end)
        return value if value is not None else second(stream, end)
    return either


def _request_header(args: str | None) -> Getter:
    def one(name: str) -> Getter:
        if name.startswith(":"):
            return _PSEUDO.get(name, _no_value)
        return lambda stream, end: _header_value(stream.headers.items, name)
    assert args is not None
    names = args.lower().split("?")
    return _either(one(names[0]), one(names[1]) if len(names) > 1 else None)


def _sent_header(parts: list[bytes], name: bytes) -> str | None:
    """Header `name` of a head sent as `parts` (status line first), as the connection manager
    made it — with the server, date and route headers it added — but without the codec's
    chunked framing (CODEC_CHUNKED); repeated headers joined by commas, as Envoy's
    %RESP(..)% does."""
    value = None
    head = b"".join(part for part in parts[1:] if part is not CODEC_CHUNKED)
    for line in head.split(b"\r\n"):
        key, _, text = line.partition(b":")
        if key.lower() == name:
            found = text.strip().decode("latin-1")
            value = found if value is None else f"{value},{found}"
    return value


def _response_header(args: str | None) -> Getter:
    def one(name: str) -> Getter:
        if name == "x-envoy-upstream-service-time":
            return lambda stream, end: stream.service_time
        raw_name = name.encode()

        def header(stream: Stream, end: float) -> FieldValue:
            headers = getattr(stream, "response_headers", None)
            if headers is None:
                return None
            if isinstance(headers, list):   # an upstream head's parts as sent (commit_raw_head)
                return _sent_header(headers, raw_name)
            value = _header_value(headers.items, name)
            if value == "0" and name == "content-length" and stream.upstream == "-":
                return None   # Envoy's codec adds it to an empty local reply on the wire only
            return value
        return header
    assert args is not None
    names = args.lower().split("?")
    return _either(one(names[0]), one(names[1]) if len(names) > 1 else None)


def _no_value(stream: Stream, end: float) -> FieldValue:
    return None


# The response flag (the first after URX, when there are several) -> Envoy's response code details.
_DETAILS = {
    "NR": "route_not_found",
    "NC": "cluster_not_found",
    "UH": "no_healthy_upstream",
    "UO": "upstream_reset_before_response_started{overflow}",
    "UF": "upstream_reset_before_response_started{remote_connection_failure}",
    "UC": "upstream_reset_before_response_started{connection_termination}",
    "UPE": "upstream_reset_before_response_started{protocol_error}",
    "UT": "response_timeout",
    "RBAC": "rbac_access_denied_matched_policy[none]",
    "DC": "downstream_remote_disconnect",
    "SI": "stream_idle_timeout",
    "UMSDR": "upstream_max_stream_duration_reached",
}


def transport_failure_reason(stream: Stream) -> str | None:
    return envoy_failure_reason(getattr(stream, "transport_failure", None))


def envoy_failure_reason(reason: str | None) -> str | None:
    """Envoy's words for why a connect failed ("delayed connect error: 111" is
    "delayed_connect_error:_Connection_refused"), spaces made underscores as in details."""
    if reason is None:
        return None
    prefix, _, code = reason.rpartition(": ")
    if prefix == "delayed connect error" and code.isdigit():
        reason = f"{prefix}: {os.strerror(int(code))}"
    elif prefix != "delayed connect error" and not reason.startswith("TLS error"):
        return None   # a connect timeout has no transport failure reason in Envoy
    return reason.replace(" ", "_")


def response_code_details(stream: Stream) -> str | None:
    """Why the response is what it is, in Envoy's words: `via_upstream` for an upstream's
    response, else the reason of the local reply."""
    flags = stream.flags if not stream.conn.closed or stream.committed else "DC"
    if stream.details is not None and flags != "DC":
        return stream.details
    if flags != "-" and flags != "URX":   # (URX alone: an upstream's answer, retries exhausted)
        # the flag that says why (URX, retries exhausted, comes first: Envoy sets it first)
        flag = flags[4:] if flags.startswith("URX,") else flags.split(",", 1)[0]
        if flag == "UF":
            reason = transport_failure_reason(stream)
            if reason is not None:
                return f"upstream_reset_before_response_started{{remote_connection_failure|{reason}}}"
        return _DETAILS.get(flag)
    if stream.upstream != "-":
        return "via_upstream"
    if stream.status == 0:
        return None
    return "direct_response"
