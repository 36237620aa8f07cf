"""Retry decisions (Envoy's router retry state), sans-IO.

Theory of operation: the router asks `RetryState.decide(outcome)` after every attempt that
did not produce a response it will return as is. An outcome is either a response status or
one of the failure kinds below. The answer is whether to try again; the caller then asks
`backoff(rng)` for the delay and the circuit breaker for a retry slot.

Rules (envoy.config.route.v3.RetryPolicy, x-envoy-retry-on):
- `5xx`: any 5xx response, and every failure (connect failure, reset/close before the
  response headers, per-try timeout);
- `gateway-error`: 502, 503, 504, and every failure, like 5xx;
- `reset`: a reset/close before response headers, a per-try (or per-try idle) timeout, or
  the cluster's max_stream_duration reached before the response head;
- `connect-failure`: the connection to the host could not be made (also its timeout);
- `retriable-4xx`: 409; `retriable-status-codes`: the policy's listed codes (plus
  x-envoy-retriable-status-codes); `refused-stream`: HTTP/2 REFUSED_STREAM, never seen on
  HTTP/1.1 but accepted so Envoy configs load;
- at most `num_retries` retries (default 1);
- `per_try_timeout` and `per_try_idle_timeout` start once the request is wholly sent
  upstream (a streamed request body has gone out), as Envoy's do;
- `per_try_idle_timeout`: an attempt with no upstream progress (its response head, a body
  chunk) for that long is reset; before the head it is retried as a per-try timeout is
  (`upstream_rq_per_try_idle_timeout`), after it the response is cut (proxy/http/response_timers.py);
- back-off: Envoy's jittered exponential back-off, the n-th delay uniform in
  [0, min((2^n - 1) * base, max)), base 25 ms and max 10 * base unless configured.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join, non_negative_seconds, seconds

CONNECT_FAILURE = "connect-failure"
RESET = "reset"          # the upstream closed or reset before sending response headers
PROTOCOL_ERROR = "protocol-error"   # the upstream's answer was not HTTP/1.1 (a reset too)
PER_TRY_TIMEOUT = "per-try-timeout"
PER_TRY_IDLE_TIMEOUT = "per-try-idle-timeout"

KNOWN_RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "reset-before-request", "envoy-ratelimited", "http3-post-connect-failure",
    # gRPC status conditions (Istio's default policy names `unavailable` and `cancelled`): gRPC
    # needs HTTP/2, so an HTTP/1.1 upstream never answers with a grpc-status to retry on
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})

_GATEWAY_ERRORS = frozenset({502, 503, 504})


def parse_retry_on(text: str) -> frozenset[str]:
    """Comma-separated retry_on, unknown names dropped (Envoy ignores them in headers)."""
    return frozenset(name.strip() for name in text.split(",") if name.strip() in KNOWN_RETRY_ON)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_on: frozenset[str] = frozenset()
    num_retries: int = 1
    per_try_timeout: float = 0.0            # seconds, 0 = none
    per_try_idle_timeout: float = 0.0       # seconds, 0 = none
    retriable_status_codes: frozenset[int] = frozenset()
    base_interval: float = 0.025
    max_interval: float = 0.25
    previous_hosts: bool = False
    host_selection_retry_max_attempts: int = 1

    @classmethod
    def from_proto(cls, policy: Message, path: str) -> RetryPolicy:
        reject_unsupported(policy, path, ("retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
                                   "retriable_status_codes", "retry_back_off",
                                   "retry_host_predicate", "host_selection_retry_max_attempts"))
        names = [name.strip() for name in policy.retry_on.split(",") if name.strip()]
        for name in names:
            if name not in KNOWN_RETRY_ON:
                raise ConfigError(join(path, "retry_on"), f"unknown retry condition {name!r}")
        base, maximum = 0.025, 0.25
        if policy.HasField("retry_back_off"):
            back_off = policy.retry_back_off
            reject_unsupported(back_off, join(path, "retry_back_off"), ("base_interval", "max_interval"))
            base = seconds(back_off.base_interval)
            if base <= 0:
                raise ConfigError(join(path, "retry_back_off.base_interval"), "must be > 0")
            maximum = seconds(back_off.max_interval) if back_off.HasField("max_interval") else 10 * base
            if maximum < base:
                raise ConfigError(join(path, "retry_back_off.max_interval"),
                                  "must be >= base_interval")
        previous_hosts = False
        for index, predicate in enumerate(policy.retry_host_predicate):
            here = f"{join(path, 'retry_host_predicate')}[{index}]"
            type_url = predicate.typed_config.type_url
            if predicate.name != "envoy.retry_host_predicates.previous_hosts" and not type_url.endswith(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"):
                raise ConfigError(here, f"retry host predicate {predicate.name!r} is not supported")
            previous_hosts = True
        return cls(
            retry_on=frozenset(names),
            num_retries=policy.num_retries.value if policy.HasField("num_retries") else 1,
            per_try_timeout=seconds(policy.per_try_timeout),
            per_try_idle_timeout=non_negative_seconds(policy, "per_try_idle_timeout", path) or 0.0,
            retriable_status_codes=frozenset(policy.retriable_status_codes),
            base_interval=base,
            max_interval=maximum,
            previous_hosts=previous_hosts,
            host_selection_retry_max_attempts=policy.host_selection_retry_max_attempts or 1,
        )


NO_RETRY = RetryPolicy(num_retries=0)


def is_retriable(policy: RetryPolicy, outcome: int | str,
                 extra_status_codes: frozenset[int] = frozenset()) -> bool:
    """Whether `outcome` (a status, or a failure kind) is one the policy retries."""
    on = policy.retry_on
    if isinstance(outcome, int):
        if outcome >= 500 and "5xx" in on:
            return True
        if outcome in _GATEWAY_ERRORS and "gateway-error" in on:
            return True
        if outcome == 409 and "retriable-4xx" in on:
            return True
        return "retriable-status-codes" in on and (
            outcome in policy.retriable_status_codes or outcome in extra_status_codes)
    if "5xx" in on or "gateway-error" in on:
        return True
    if outcome == CONNECT_FAILURE:
        return "connect-failure" in on or "reset" in on
    return "reset" in on


@dataclass(slots=True)
class RetryState:
    """The retries left for one request and its back-off sequence."""

    policy: RetryPolicy
    extra_status_codes: frozenset[int] = frozenset()
    retries_done: int = 0
    _backoff_exponent: int = field(default=1)

    def decide(self, outcome: int | str) -> bool:
        return self.retries_done < self.policy.num_retries and is_retriable(
            self.policy, outcome, self.extra_status_codes)

    def exhausted(self, outcome: int | str) -> bool:
        """`outcome` would be retried, but no retry is left (Envoy: URX,
        upstream_rq_retry_limit_exceeded)."""
        return self.retries_done >= self.policy.num_retries and is_retriable(
            self.policy, outcome, self.extra_status_codes)

    def backoff(self, rng: random.Random) -> float:
        """Delay before the next attempt; also counts the retry."""
        self.retries_done += 1
        policy = self.policy
        ceiling = ((1 << self._backoff_exponent) - 1) * policy.base_interval
        if ceiling <= policy.max_interval:
            self._backoff_exponent += 1
        return min(rng.random() * ceiling, policy.max_interval)
