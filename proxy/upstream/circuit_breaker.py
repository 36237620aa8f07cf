"""Circuit breaking: Envoy's per-cluster resource limits.

Rules (Envoy's ResourceManager, one per cluster and routing priority):
- Four resources, each a counter with a maximum: connections, pending requests
  (waiting for a connection), requests (in flight), retries (in flight).
  Defaults: 1024, 1024, 1024 and 3.
- A resource can be taken while its count is below its maximum (`count < max`).
  When it cannot, the caller fails fast and the matching overflow counter grows:
  `upstream_cx_overflow` for connections, `upstream_rq_pending_overflow` for
  pending requests, `upstream_rq_active_overflow` for requests (Envoy 1.40; earlier
  Envoys counted a request refused by max_requests as a pending overflow),
  `upstream_rq_retry_overflow` for retries. The router
  answers an overflowed request with 503 and `x-envoy-overloaded: true`.
- Each resource reports an "open" gauge (1 while at its maximum) under
  `circuit_breakers.<priority>.{cx_open,rq_pending_open,rq_open,rq_retry_open}`
  and, with `track_remaining`, `remaining_{cx,pending,rq,retries}`.
- Connection pools are counted (open_pool/close_pool) but not limited: Envoy's
  max_connection_pools is rejected in the config.
- retry_budget replaces max_retries by a share of the load:
  `max(min_retry_concurrency, budget_percent% of (requests + pending requests))`,
  defaults 20% and 3.

The breaker only counts; it never blocks or waits. Every successful try_* must be
paired with exactly one matching finish/close call.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers

from proxy.config_error import ConfigError, reject_unsupported

PRIORITY_NAMES = {0: "default", 1: "high"}
# Envoy's "no limit" (uint64 max), as its remaining_cx_pools gauge shows it.
_UNLIMITED = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class RetryBudget:
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class CircuitBreakerThresholds:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    retry_budget: RetryBudget | None = None
    track_remaining: bool = False
    priority: str = "default"

    @classmethod
    def from_proto(
        cls, message: CircuitBreakers | None, priority: int = 0, path: str = "circuit_breakers"
    ) -> CircuitBreakerThresholds:
        """The thresholds for routing `priority` (0 DEFAULT, 1 HIGH) from `Cluster.circuit_breakers`;
        Envoy's defaults when the message or that priority's entry is absent."""
        name = PRIORITY_NAMES[priority]
        if message is None:
            return cls(priority=name)
        reject_unsupported(message, path, ("thresholds",))
        seen: set[int] = set()
        chosen = None
        for i, thresholds in enumerate(message.thresholds):
            at = f"{path}.thresholds[{i}]"
            reject_unsupported(
                thresholds,
                at,
                ("priority", "max_connections", "max_pending_requests", "max_requests",
                 "max_retries", "retry_budget", "track_remaining"),
            )
            if thresholds.priority in seen:
                raise ConfigError(f"{at}.priority", "duplicate priority (each may appear once)")
            seen.add(thresholds.priority)
            if thresholds.priority == priority:
                chosen = (thresholds, at)
        if chosen is None:
            return cls(priority=name)
        thresholds, at = chosen

        def wrapped(field: str, default: int) -> int:
            return getattr(thresholds, field).value if thresholds.HasField(field) else default

        budget = None
        if thresholds.HasField("retry_budget"):
            rb = thresholds.retry_budget
            percent = rb.budget_percent.value if rb.HasField("budget_percent") else 20.0
            if not 0.0 <= percent <= 100.0:
                raise ConfigError(f"{at}.retry_budget.budget_percent", f"must be within 0..100, got {percent}")
            minimum = rb.min_retry_concurrency.value if rb.HasField("min_retry_concurrency") else 3
            budget = RetryBudget(percent, minimum)
        return cls(
            max_connections=wrapped("max_connections", 1024),
            max_pending_requests=wrapped("max_pending_requests", 1024),
            max_requests=wrapped("max_requests", 1024),
            max_retries=wrapped("max_retries", 3),
            retry_budget=budget,
            track_remaining=thresholds.track_remaining,
            priority=name,
        )


class CircuitBreaker:
    """The counters of one cluster at one routing priority."""

    __slots__ = (
        "connection_pools",
        "connections",
        "cx_overflow",
        "pending_requests",
        "requests",
        "retries",
        "rq_active_overflow",
        "rq_pending_overflow",
        "rq_retry_overflow",
        "thresholds",
    )

    def __init__(self, thresholds: CircuitBreakerThresholds | None = None) -> None:
        self.thresholds = thresholds or CircuitBreakerThresholds()
        self.connections = 0
        self.pending_requests = 0
        self.requests = 0
        self.retries = 0
        self.connection_pools = 0
        # Envoy's overflow counters (cluster.NAME.upstream_*_overflow).
        self.cx_overflow = 0
        self.rq_active_overflow = 0
        self.rq_pending_overflow = 0
        self.rq_retry_overflow = 0

    # requests in flight
    def try_start_request(self) -> bool:
        if self.requests >= self.thresholds.max_requests:
            self.rq_active_overflow += 1
            return False
        self.requests += 1
        return True

    def finish_request(self) -> None:
        self.requests -= 1

    # requests waiting for a connection
    def try_start_pending(self) -> bool:
        if self.pending_requests >= self.thresholds.max_pending_requests:
            self.rq_pending_overflow += 1
            return False
        self.pending_requests += 1
        return True

    def finish_pending(self) -> None:
        self.pending_requests -= 1

    # connections
    def try_open_connection(self) -> bool:
        if self.connections >= self.thresholds.max_connections:
            self.cx_overflow += 1
            return False
        self.connections += 1
        return True

    def close_connection(self) -> None:
        self.connections -= 1

    # connection pools (one per host in use); unlimited, since max_connection_pools is
    # not supported, but counted for Envoy's remaining_cx_pools gauge
    def open_pool(self) -> None:
        self.connection_pools += 1

    def close_pool(self) -> None:
        self.connection_pools -= 1

    # retries in flight
    @property
    def max_retries(self) -> int:
        return retry_limit(self.thresholds, self.requests, self.pending_requests)

    def try_start_retry(self) -> bool:
        if self.retries >= self.max_retries:
            self.rq_retry_overflow += 1
            return False
        self.retries += 1
        return True

    def finish_retry(self) -> None:
        self.retries -= 1

    # open gauges
    @property
    def cx_open(self) -> int:
        return int(self.connections >= self.thresholds.max_connections)

    @property
    def rq_pending_open(self) -> int:
        return int(self.pending_requests >= self.thresholds.max_pending_requests)

    @property
    def rq_open(self) -> int:
        return int(self.requests >= self.thresholds.max_requests)

    @property
    def rq_retry_open(self) -> int:
        return int(self.retries >= self.max_retries)

    def totals(self) -> tuple[int, int, int, int, int]:
        """(connections, pending requests, requests, retries, connection pools) in use by the
        cluster in the whole proxy: here, this worker's (proxy/upstream/shared_breaker.py
        counts across workers)."""
        return self.connections, self.pending_requests, self.requests, self.retries, self.connection_pools

    def stats(self) -> dict[str, int]:
        """Envoy's names, relative to `cluster.NAME.`."""
        prefix = f"circuit_breakers.{self.thresholds.priority}."
        t = self.thresholds
        connections, pending, requests, retries, pools = self.totals()
        max_retries = retry_limit(t, requests, pending)
        stats = {
            f"{prefix}cx_open": int(connections >= t.max_connections),
            f"{prefix}cx_pool_open": 0,  # connection pools are not limited (max_connection_pools)
            f"{prefix}rq_pending_open": int(pending >= t.max_pending_requests),
            f"{prefix}rq_open": int(requests >= t.max_requests),
            f"{prefix}rq_retry_open": int(retries >= max_retries),
            "upstream_cx_overflow": self.cx_overflow,
            "upstream_cx_pool_overflow": 0,
            "upstream_rq_active_overflow": self.rq_active_overflow,
            "upstream_rq_pending_overflow": self.rq_pending_overflow,
            "upstream_rq_retry_overflow": self.rq_retry_overflow,
        }
        if t.track_remaining:
            stats[f"{prefix}remaining_cx"] = max(0, t.max_connections - connections)
            stats[f"{prefix}remaining_pending"] = max(0, t.max_pending_requests - pending)
            stats[f"{prefix}remaining_rq"] = max(0, t.max_requests - requests)
            stats[f"{prefix}remaining_retries"] = max(0, max_retries - retries)
            stats[f"{prefix}remaining_cx_pools"] = _UNLIMITED - pools
        return stats


def retry_limit(thresholds: CircuitBreakerThresholds, requests: int, pending: int) -> int:
    """max_retries, or with a retry budget its share of the requests and pending requests."""
    budget = thresholds.retry_budget
    if budget is None:
        return thresholds.max_retries
    share = int(budget.budget_percent / 100.0 * (requests + pending))
    return max(share, budget.min_retry_concurrency)
