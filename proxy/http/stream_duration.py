"""A route's gRPC timeouts and maximum stream duration (RouteAction `max_stream_duration`, and
the older `max_grpc_timeout` / `grpc_timeout_offset` Istio still sets).

Rules (Envoy 1.40):
- `max_stream_duration` set on a route ("new timeouts"): the route `timeout` no longer
  applies (no x-envoy-expected-rq-timeout-ms unless a per-try timeout sets it); instead the
  stream's duration is bounded, from the request's arrival:
  * a request carrying a valid `grpc-timeout` on a route with `grpc_timeout_header_max`:
    that timeout, capped at `grpc_timeout_header_max` (0: no cap), less
    `grpc_timeout_header_offset` (to 0 when the offset is not smaller);
  * otherwise `max_stream_duration.max_stream_duration` (0 or unset: no bound);
  a gRPC request (content-type application/grpc…) goes upstream with `grpc-timeout` set to
  the bound. When the bound is reached before a response: 504 "downstream duration timeout"
  (408 while the request is still arriving; for a gRPC request 200 with grpc-status 4), and
  `downstream_rq_max_duration_reached`, with no response flag (details max_duration_timeout);
  after the response began, the body is cut and the connection closes
  (proxy/http/response_timers.py);
- the connection manager's `common_http_protocol_options.max_stream_duration` bounds a
  request the same way, unless its route sets `max_stream_duration` (even to 0: no bound).
- `max_grpc_timeout` set and no `max_stream_duration`: a gRPC request's route timeout is its
  `grpc-timeout` (none: infinite) less `grpc_timeout_offset` (only when smaller), capped at
  `max_grpc_timeout` (0: no cap); other requests keep the route `timeout`.

`grpc-timeout` is at most 8 digits and a unit (H, M, S, m, u, n; u and n round up to a
millisecond); anything else is ignored, as if absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from google.protobuf.message import Message

from proxy.config_error import reject_unsupported
from proxy.http.headers import Headers
from proxy.proto_config import join, non_negative_seconds

DURATION_TIMEOUT = "duration-timeout"
DURATION_BODY = b"downstream duration timeout"
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3}
_IMMEDIATE = 1e-6   # a bound of 0 from grpc-timeout expires at once (0 elsewhere means none)


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    new_timeouts: bool                         # max_stream_duration is set on the route
    max_stream_duration: float = 0.0           # 0: no bound
    grpc_header_max: float | None = None       # None: grpc-timeout is not used
    grpc_header_offset: float = 0.0
    max_grpc_timeout: float | None = None      # the older fields (without new timeouts)
    grpc_timeout_offset: float = 0.0

    @classmethod
    def from_route_action(cls, message: Message, path: str) -> StreamTimeouts | None:
        """None when the route sets none of these fields."""
        if message.HasField("max_stream_duration"):
            here = join(path, "max_stream_duration")
            duration = message.max_stream_duration
            reject_unsupported(duration, here, ("max_stream_duration", "grpc_timeout_header_max",
                                                "grpc_timeout_header_offset"))
            return cls(
                new_timeouts=True,
                max_stream_duration=non_negative_seconds(duration, "max_stream_duration", here) or 0.0,
                grpc_header_max=non_negative_seconds(duration, "grpc_timeout_header_max", here),
                grpc_header_offset=non_negative_seconds(duration, "grpc_timeout_header_offset", here) or 0.0)
        if message.HasField("max_grpc_timeout") or message.HasField("grpc_timeout_offset"):
            return cls(new_timeouts=False,
                       max_grpc_timeout=non_negative_seconds(message, "max_grpc_timeout", path),
                       grpc_timeout_offset=non_negative_seconds(message, "grpc_timeout_offset", path) or 0.0)
        return None

    def for_request(self, headers: Headers, names: set[str]) -> float | None:
        """The deadline delay this request gets (0.0: none) when it differs from the
        route's own (None: the route's own applies); may set the request's grpc-timeout."""
        if self.new_timeouts:
            grpc = "content-type" in names and is_grpc(headers)
            if "grpc-timeout" not in names and not grpc:
                return None
            bound = self.max_stream_duration
            header = parse_grpc_timeout(headers.get("grpc-timeout")) if "grpc-timeout" in names else None
            if header is not None and self.grpc_header_max is not None:
                bound = header
                if self.grpc_header_max and bound > self.grpc_header_max:
                    bound = self.grpc_header_max
                if bound and self.grpc_header_offset:
                    bound = bound - self.grpc_header_offset if self.grpc_header_offset < bound else 0.0
                if bound == 0.0:
                    bound = _IMMEDIATE
            if grpc and bound:
                headers.set("grpc-timeout", format_grpc_timeout(bound))
            return bound
        if self.max_grpc_timeout is None or "content-type" not in names or not is_grpc(headers):
            return None
        timeout = parse_grpc_timeout(headers.get("grpc-timeout")) or 0.0
        if self.grpc_timeout_offset and self.grpc_timeout_offset < timeout:
            timeout -= self.grpc_timeout_offset
        if self.max_grpc_timeout and (timeout == 0.0 or timeout > self.max_grpc_timeout):
            timeout = self.max_grpc_timeout
        if timeout:
            headers.set("grpc-timeout", format_grpc_timeout(timeout))
        return timeout


def is_grpc(headers: Headers) -> bool:
    """A gRPC request: content-type application/grpc, or application/grpc+… / ;… (not grpc-web)."""
    content_type = headers.get("content-type")
    return content_type is not None and content_type.startswith("application/grpc") and (
        len(content_type) == 16 or content_type[16] in "+;")


def parse_grpc_timeout(value: str | None) -> float | None:
    """A grpc-timeout header in seconds; None when absent or malformed."""
    if not value or len(value) < 2 or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1]
    if not digits.isdigit():
        return None
    amount = int(digits)
    if unit in _UNITS:
        return amount * _UNITS[unit]
    if unit == "u":
        return math.ceil(amount / 1000) / 1000
    if unit == "n":
        return math.ceil(amount / 1_000_000) / 1000
    return None


def format_grpc_timeout(bound: float) -> str:
    """Milliseconds, in the largest unit that keeps the value within 8 digits (as Envoy)."""
    value = max(round(bound * 1000), 0)
    for unit, scale in (("m", 1000), ("S", 60), ("M", 60)):
        if value <= 99_999_999:
            return f"{value}{unit}"
        value //= scale
    return f"{min(value, 99_999_999)}H"
