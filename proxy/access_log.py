"""HTTP access logs in Envoy's default format, to stdout, stderr or a file.

Rules (envoy.config.accesslog.v3.AccessLog with the stdout, stderr or file logger): one line
per request when it completes, in Envoy's default format

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"

with "-" for anything absent. Custom formats and filters are rejected at load (with their
path). Lines are buffered and flushed at least once a second, as Envoy flushes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.extensions.access_loggers.file.v3.file_pb2 import FileAccessLog
from envoy.extensions.access_loggers.stream.v3.stream_pb2 import StderrAccessLog, StdoutAccessLog

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join

_FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_STDOUT = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_STDERR = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    target: str          # "stdout", "stderr" or a file path

    @classmethod
    def from_proto(cls, message: AccessLog, path: str) -> AccessLogConfig:
        reject_unsupported(message, path, ("name", "typed_config"))
        type_url = message.typed_config.type_url
        here = join(path, "typed_config")
        if type_url == _FILE:
            logger = FileAccessLog()
            message.typed_config.Unpack(logger)
            reject_unsupported(logger, here, ("path",))
            if not logger.path:
                raise ConfigError(join(here, "path"), "must not be empty")
            return cls(logger.path)
        if type_url in (_STDOUT, _STDERR):
            stream: StdoutAccessLog | StderrAccessLog = StdoutAccessLog() if type_url == _STDOUT else StderrAccessLog()
            message.typed_config.Unpack(stream)
            reject_unsupported(stream, here, ())
            return cls("stdout" if type_url == _STDOUT else "stderr")
        raise ConfigError(here, f"access logger {message.name!r} ({type_url or 'no type'}) is not "
                          "supported (file, stdout, stderr)")


@dataclass(slots=True)
class AccessRecord:
    """What a request left for its log line."""

    start: float                 # wall clock seconds
    method: str
    path: str
    authority: str
    status: int
    flags: str
    bytes_received: int
    bytes_sent: int
    duration_ms: int
    service_time: str | None
    forwarded_for: str | None
    user_agent: str | None
    request_id: str | None
    upstream: str


def format_line(record: AccessRecord) -> str:
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.start))
    millis = int((record.start % 1) * 1000)
    return (f'[{start}.{millis:03d}Z] "{record.method} {record.path} HTTP/1.1" {record.status} '
            f'{record.flags} {record.bytes_received} {record.bytes_sent} {record.duration_ms} '
            f'{record.service_time or "-"} "{record.forwarded_for or "-"}" "{record.user_agent or "-"}" '
            f'"{record.request_id or "-"}" "{record.authority or "-"}" "{record.upstream}"\n')


class AccessLogWriter:
    def __init__(self, configs: tuple[AccessLogConfig, ...]) -> None:
        self._streams: list[IO[str]] = []
        for config in configs:
            if config.target == "stdout":
                self._streams.append(sys.stdout)
            elif config.target == "stderr":
                self._streams.append(sys.stderr)
            else:
                self._streams.append(open(config.target, "a", encoding="utf-8", buffering=1 << 16))  # noqa: SIM115

    def write(self, record: AccessRecord) -> None:
        line = format_line(record)
        for stream in self._streams:
            stream.write(line)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()
