"""Access logs: the file, stdout and stderr loggers with Envoy's formats.

Rules (envoy.config.accesslog.v3.AccessLog with envoy.access_loggers.file / stdout /
stderr): one line per HTTP request when it completes (on the HTTP connection manager) or
per TCP connection when it closes (on tcp_proxy). The line is Envoy's default format
(access_log_format.DEFAULT_FORMAT) unless `log_format` gives `text_format_source`
(`inline_string`) or `json_format`, with `omit_empty_values`; filters, other loggers and
other format fields are rejected at load, naming their path. Lines are buffered and flushed
at least once a second, as Envoy flushes.

Theory of operation: the format is compiled at config time (proxy/access_log_format.py);
at the end of a request the connection manager calls `AccessLogWriter.write_http`, which
wraps the finished `Stream` in an `HttpRecord` (the fields Envoy's command operators read,
computed only when an operator asks) and runs each logger's getters. Nothing runs and
nothing is allocated for a listener without access logs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.core.v3.substitution_format_string_pb2 import SubstitutionFormatString
from envoy.extensions.access_loggers.file.v3.file_pb2 import FileAccessLog
from envoy.extensions.access_loggers.stream.v3.stream_pb2 import StderrAccessLog, StdoutAccessLog

from proxy.access_log_format import (
    DEFAULT_FORMAT,
    JsonFormat,
    TextFormat,
    compile_json,
    compile_text,
)
from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join

if TYPE_CHECKING:
    from proxy.http.stream import Stream

_FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_STDOUT = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_STDERR = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"

LogFormat = TextFormat | JsonFormat


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    target: str          # "stdout", "stderr" or a file path
    format: LogFormat

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
        return compile_text(DEFAULT_FORMAT, path)
    return log_format_from_proto(logger.log_format, join(path, "log_format"))


def log_format_from_proto(message: SubstitutionFormatString, path: str) -> LogFormat:
    reject_unsupported(message, path, ("text_format_source", "json_format", "omit_empty_values"))
    omit = message.omit_empty_values
    if message.HasField("json_format"):
        return compile_json(message.json_format, join(path, "json_format"), omit)
    if message.HasField("text_format_source"):
        here = join(path, "text_format_source")
        source = message.text_format_source
        reject_unsupported(source, here, ("inline_string",))
        if not source.inline_string:
            raise ConfigError(join(here, "inline_string"), "must not be empty")
        return compile_text(source.inline_string, join(here, "inline_string"), omit)
    raise ConfigError(path, "one of text_format_source or json_format is required")


class HttpRecord:
    """A finished request as Envoy's command operators see it (access_log_format's getters)."""

    __slots__ = ("_stream", "_use_remote_address", "bytes_sent", "downstream_local",
                 "downstream_remote", "start", "status", "upstream", "version")

    def __init__(self, stream: Stream, use_remote_address: bool) -> None:
        self._stream = stream
        self._use_remote_address = use_remote_address
        self.start = stream.start
        self.version = stream.version
        self.status = stream.status
        self.bytes_sent = stream.bytes_sent
        self.upstream = stream.upstream
        self.downstream_local = stream.downstream_local
        self.downstream_remote = stream.downstream_remote

    def response_flags(self) -> str:
        stream = self._stream
        return stream.flags if not stream.conn.closed or stream.committed else "DC"

    def response_code_details(self) -> str | None:
        return response_code_details(self._stream)

    def bytes_received(self) -> int:
        return self._stream.body.size

    def cluster_name(self) -> str | None:
        cluster = getattr(self._stream, "cluster", None)
        return cluster.name if cluster is not None else None

    def upstream_local(self) -> tuple[str, int] | None:
        connection = getattr(self._stream, "upstream_connection", None)
        transport = connection.transport if connection is not None else None
        return transport.get_extra_info("sockname") if transport is not None else None

    def remote_address(self) -> tuple[str, int] | None:
        """Envoy's downstream remote address: the peer with use_remote_address, else the
        last x-forwarded-for entry when it is an IP (port 0), else the peer."""
        stream = self._stream
        if not self._use_remote_address:
            forwarded = stream.headers.get_joined("x-forwarded-for")
            if forwarded:
                last = forwarded.rsplit(",", 1)[-1].strip()
                try:
                    return (str(ipaddress.ip_address(last)), 0)
                except ValueError:
                    pass
        return stream.downstream_remote

    def transport_failure_reason(self) -> str | None:
        return transport_failure_reason(self._stream)

    def requested_server_name(self) -> str | None:
        return None   # plain-text HTTP listeners carry no SNI

    def route_name(self) -> str | None:
        selection = getattr(self._stream, "selection", None)
        return selection.route.name if selection is not None else None

    def request_header(self, name: str) -> str | None:
        stream = self._stream
        if name[0] == ":":
            if name == ":method":
                return stream.method or None
            if name == ":path":
                return getattr(stream, "upstream_target", None) or stream.target or None
            if name == ":authority":
                return stream.headers.get("host")
            if name == ":scheme":
                return "http"
            return None
        return stream.headers.get_joined(name)

    def response_header(self, name: str) -> str | None:
        stream = self._stream
        if name == "x-envoy-upstream-service-time":
            return stream.service_time
        headers = getattr(stream, "response_headers", None)
        if headers is None:
            return None
        if isinstance(headers, list):   # the upstream's raw lines (proxy/http/client.py)
            key = name.encode()
            values = [value.decode("latin-1") for line, value in headers if line == key]
            return ",".join(values) if values else None
        value = headers.get_joined(name)
        if value == "0" and name == "content-length" and stream.upstream == "-":
            return None   # Envoy's codec adds it to an empty local reply on the wire only
        return value

    def trailer(self, name: str) -> str | None:
        return None


# The response flag (the first, when there are several) -> Envoy's response code details.
_DETAILS = {
    "NR": "route_not_found",
    "NC": "cluster_not_found",
    "UH": "no_healthy_upstream",
    "UO": "upstream_reset_before_response_started{overflow}",
    "UF": "upstream_reset_before_response_started{remote_connection_failure}",
    "UC": "upstream_reset_before_response_started{connection_termination}",
    "UT": "response_timeout",
    "RBAC": "rbac_access_denied_matched_policy[none]",
    "DC": "downstream_remote_disconnect",
    "SI": "stream_idle_timeout",
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
    if flags != "-":
        flag = flags.split(",", 1)[0]
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


class AccessLogWriter:
    """The loggers of one connection manager or tcp_proxy; buffered, and flushed about a
    second after a line is written (the timer is armed only while lines are pending)."""

    def __init__(self, configs: tuple[AccessLogConfig, ...], use_remote_address: bool = False) -> None:
        self._loggers: list[tuple[LogFormat, IO[str]]] = []
        self._use_remote_address = use_remote_address
        self._flush_timer: asyncio.TimerHandle | None = None
        for config in configs:
            if config.target == "stdout":
                stream: IO[str] = sys.stdout
            elif config.target == "stderr":
                stream = sys.stderr
            else:
                stream = open(config.target, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            self._loggers.append((config.format, stream))

    def write_http(self, stream: Stream, end: float) -> None:
        """A request ended at loop time `end`: one line per logger."""
        self.write_record(HttpRecord(stream, self._use_remote_address), end)

    def write_record(self, record: object, end: float) -> None:
        """A record the formats' getters read (an HttpRecord, a TCP connection) ended at `end`."""
        for log_format, target in self._loggers:
            target.write(log_format.format(record, end))
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(1.0, self.flush)

    def flush(self) -> None:
        self._flush_timer = None
        for _, target in self._loggers:
            target.flush()
