"""The configuration of one cluster's active health checker (Envoy's HealthCheck).

Rules: timeout, interval, unhealthy_threshold and healthy_threshold are required,
as in Envoy. Defaults (Envoy's): no_traffic_interval 60 s, no_traffic_healthy_interval
= no_traffic_interval, unhealthy_interval = interval, unhealthy_edge_interval =
unhealthy_interval, healthy_edge_interval = interval, no jitter, reuse_connection
true. HTTP checks: GET, Host = the cluster name unless `host` is set, healthy on
an expected status (default 200; ranges are [start, end)). TCP checks: empty
`send` and `receive` means "connect only"; otherwise `send` is written and every
`receive` payload must then appear in the response, in order.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3.health_check_pb2 import HealthCheck

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.health.check_name import health_check_name

_METHODS = {0: "GET", 1: "GET", 2: "HEAD", 3: "POST", 4: "PUT", 5: "DELETE", 7: "OPTIONS", 8: "TRACE", 9: "PATCH"}


def _seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def _payload(message: Any, path: str) -> bytes:
    reject_unsupported(message, path, ("text", "binary"))
    if message.HasField("binary"):
        return bytes(message.binary)
    try:
        return binascii.unhexlify(message.text)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path}.text", "must be hex-encoded bytes") from None


def _ranges(ranges: Any, path: str) -> tuple[tuple[int, int], ...]:
    out = []
    for i, r in enumerate(ranges):
        if not 100 <= r.start < r.end <= 600:
            raise ConfigError(f"{path}[{i}]", f"must satisfy 100 <= start < end <= 600, got [{r.start}, {r.end})")
        out.append((int(r.start), int(r.end)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class HttpCheck:
    path: str
    host: str | None = None  # None: the cluster's name
    method: str = "GET"
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)
    retriable_statuses: tuple[tuple[int, int], ...] = ()
    headers_to_add: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()

    def is_expected(self, status: int) -> bool:
        return any(start <= status < end for start, end in self.expected_statuses)

    def is_retriable(self, status: int) -> bool:
        return any(start <= status < end for start, end in self.retriable_statuses)

    @classmethod
    def from_proto(cls, message: HealthCheck.HttpHealthCheck, path: str) -> HttpCheck:
        reject_unsupported(
            message,
            path,
            ("host", "path", "request_headers_to_add", "request_headers_to_remove",
             "expected_statuses", "retriable_statuses", "codec_client_type", "method"),
        )
        if not message.path:
            raise ConfigError(f"{path}.path", "is required")
        if message.codec_client_type != 0:
            raise ConfigError(f"{path}.codec_client_type", "only HTTP1 health checks are supported")
        if message.method not in _METHODS:
            raise ConfigError(f"{path}.method", "CONNECT cannot be used for health checks")
        added = []
        for i, option in enumerate(message.request_headers_to_add):
            at = f"{path}.request_headers_to_add[{i}]"
            reject_unsupported(option, at, ("header",))
            reject_unsupported(option.header, f"{at}.header", ("key", "value"))
            added.append((option.header.key, option.header.value))
        expected = _ranges(message.expected_statuses, f"{path}.expected_statuses")
        return cls(
            path=message.path,
            host=message.host or None,
            method=_METHODS[message.method],
            expected_statuses=expected or ((200, 201),),
            retriable_statuses=_ranges(message.retriable_statuses, f"{path}.retriable_statuses"),
            headers_to_add=tuple(added),
            headers_to_remove=tuple(h.lower() for h in message.request_headers_to_remove),
        )


@dataclass(frozen=True, slots=True)
class TcpCheck:
    send: bytes = b""
    receive: tuple[bytes, ...] = ()

    @property
    def connect_only(self) -> bool:
        return not self.receive

    @classmethod
    def from_proto(cls, message: HealthCheck.TcpHealthCheck, path: str) -> TcpCheck:
        reject_unsupported(message, path, ("send", "receive"))
        send = _payload(message.send, f"{path}.send") if message.HasField("send") else b""
        receive = tuple(_payload(p, f"{path}.receive[{i}]") for i, p in enumerate(message.receive))
        return cls(send, receive)


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    check: HttpCheck | TcpCheck = field(default_factory=TcpCheck)
    no_traffic_interval: float = 60.0
    no_traffic_healthy_interval: float | None = None  # None: no_traffic_interval
    unhealthy_interval: float | None = None  # None: interval
    unhealthy_edge_interval: float | None = None  # None: unhealthy_interval
    healthy_edge_interval: float | None = None  # None: interval
    initial_jitter: float = 0.0
    interval_jitter: float = 0.0
    interval_jitter_percent: int = 0
    reuse_connection: bool = True
    name: str = ""   # required with several checkers: their stats are health_check.name.NAME.*

    @classmethod
    def from_proto(cls, message: HealthCheck, path: str = "health_checks[0]") -> HealthCheckConfig:
        durations = (
            "timeout", "interval", "no_traffic_interval", "no_traffic_healthy_interval",
            "unhealthy_interval", "unhealthy_edge_interval", "healthy_edge_interval",
            "initial_jitter", "interval_jitter",
        )
        reject_unsupported(
            message,
            path,
            (*durations, "unhealthy_threshold", "healthy_threshold", "interval_jitter_percent",
             "reuse_connection", "http_health_check", "tcp_health_check"),
        )
        for required in ("timeout", "interval", "unhealthy_threshold", "healthy_threshold"):
            if not message.HasField(required):
                raise ConfigError(f"{path}.{required}", "is required")
        values: dict[str, float] = {}
        for name in durations:
            if message.HasField(name):
                seconds = _seconds(getattr(message, name))
                if seconds <= 0 and name not in ("initial_jitter", "interval_jitter"):
                    raise ConfigError(f"{path}.{name}", f"must be positive, got {seconds}s")
                values[name] = seconds
        check: HttpCheck | TcpCheck
        if message.HasField("http_health_check"):
            check = HttpCheck.from_proto(message.http_health_check, f"{path}.http_health_check")
        elif message.HasField("tcp_health_check"):
            check = TcpCheck.from_proto(message.tcp_health_check, f"{path}.tcp_health_check")
        else:
            raise ConfigError(path, "one of http_health_check or tcp_health_check is required")
        return cls(
            timeout=values["timeout"],
            interval=values["interval"],
            unhealthy_threshold=message.unhealthy_threshold.value,
            healthy_threshold=message.healthy_threshold.value,
            check=check,
            no_traffic_interval=values.get("no_traffic_interval", 60.0),
            no_traffic_healthy_interval=values.get("no_traffic_healthy_interval"),
            unhealthy_interval=values.get("unhealthy_interval"),
            unhealthy_edge_interval=values.get("unhealthy_edge_interval"),
            healthy_edge_interval=values.get("healthy_edge_interval"),
            initial_jitter=values.get("initial_jitter", 0.0),
            interval_jitter=values.get("interval_jitter", 0.0),
            interval_jitter_percent=message.interval_jitter_percent,
            reuse_connection=message.reuse_connection.value if message.HasField("reuse_connection") else True,
            name=health_check_name(message),
        )

    @classmethod
    def from_cluster(cls, health_checks: Any, path: str = "health_checks") -> tuple[HealthCheckConfig, ...]:
        """From `Cluster.health_checks`, one checker each. Envoy 1.40: with several, every
        one must have a distinct name, and a host is healthy only while all of them pass."""
        configs = tuple(cls.from_proto(check, f"{path}[{index}]") for index, check in enumerate(health_checks))
        if len(configs) > 1:
            names: set[str] = set()
            for index, config in enumerate(configs):
                if not config.name:
                    raise ConfigError(f"{path}[{index}].name", f"health check at index {index} is missing a "
                                      "name; all health checks must have a name when multiple health "
                                      "checks are configured")
                if config.name in names:
                    raise ConfigError(f"{path}[{index}].name", f"duplicate health check name "
                                      f"'{config.name}' at index {index}; all health check names "
                                      "must be unique within a cluster")
                names.add(config.name)
        return configs
