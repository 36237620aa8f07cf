"""The per-host health state machine and check scheduling, as Envoy runs them.

Rules (Envoy's ActiveHealthCheckSession):
- A host under active health checking starts *failed and pending*: it gets no
  traffic until its first check passes. The first success makes it healthy at
  once (faster start-up); later, a failed host needs `healthy_threshold`
  consecutive successes.
- A healthy host becomes failed after `unhealthy_threshold` consecutive network
  failures (connect error, reset, timeout) or retriable HTTP statuses, but at
  once on an active failure: an HTTP status that is neither expected nor retriable
  (a host answering 503 wants out now), and on a passive failure: an upstream
  response carrying `x-envoy-immediate-health-check-fail`.
- A success resets the failure count; a failure resets the success count.
- Transition of a check: CHANGED when the host flipped (or its first result
  arrived), CHANGE_PENDING when it moved toward a flip, UNCHANGED otherwise.

Scheduling (Envoy's HealthCheckerImplBase::interval): the next check starts
after the previous one finished, after
- with traffic seen on the cluster: on success `interval` (`healthy_edge_interval`
  while a flip is pending), on failure `unhealthy_interval`
  (`unhealthy_edge_interval` while pending);
- with no traffic yet: `no_traffic_healthy_interval` after a success that settled
  the host healthy, `no_traffic_interval` otherwise;
plus jitter: random % (interval_jitter_percent% of it) + random % interval_jitter,
at least 1 ms.
"""

from __future__ import annotations

import enum
import random

from proxy.upstream.health.config import HealthCheckConfig


class Transition(enum.Enum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    CHANGE_PENDING = "change_pending"


class FailureKind(enum.Enum):
    ACTIVE = "active"  # the host answered, and the answer is a failure
    NETWORK = "network"  # connect error or reset
    NETWORK_TIMEOUT = "network_timeout"  # no answer within the timeout
    PASSIVE = "passive"  # the host said so itself (x-envoy-immediate-health-check-fail)


class HealthState:
    __slots__ = ("failed", "first_check", "healthy_threshold", "num_healthy", "num_unhealthy",
                 "pending", "unhealthy_threshold")

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int, failed: bool = True) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.failed = failed
        self.pending = True  # no check result yet
        self.first_check = True
        self.num_healthy = 0
        self.num_unhealthy = 0

    def on_success(self) -> Transition:
        self.num_unhealthy = 0
        transition = Transition.UNCHANGED
        if self.failed:
            self.num_healthy += 1
            if self.first_check or self.num_healthy == self.healthy_threshold:
                self.failed = False
                self.num_healthy = 0
                transition = Transition.CHANGED
            else:
                transition = Transition.CHANGE_PENDING
        self.first_check = False
        return self._settle(transition)

    def on_failure(self, kind: FailureKind, retriable: bool = False) -> Transition:
        self.num_healthy = 0
        transition = Transition.UNCHANGED
        if not self.failed:
            self.num_unhealthy += 1
            immediate = kind in (FailureKind.ACTIVE, FailureKind.PASSIVE) and not retriable
            if immediate or self.num_unhealthy == self.unhealthy_threshold:
                self.failed = True
                self.num_unhealthy = 0
                transition = Transition.CHANGED
            else:
                transition = Transition.CHANGE_PENDING
        self.first_check = False
        return self._settle(transition)

    def on_result(self, ok: bool) -> Transition:
        """A plain pass/fail (a failure counts toward the threshold, like a network failure)."""
        return self.on_success() if ok else self.on_failure(FailureKind.NETWORK)

    def _settle(self, transition: Transition) -> Transition:
        # The first result always counts as a change: the host is no longer pending.
        if self.pending:
            self.pending = False
            return Transition.CHANGED
        return transition


def next_interval(
    config: HealthCheckConfig,
    passed: bool,
    transition: Transition,
    has_traffic: bool,
    rng: random.Random,
) -> float:
    """Seconds until the next check of a host whose last check `passed` (or not)."""
    pending = transition is Transition.CHANGE_PENDING
    if has_traffic:
        if passed:
            base = (config.healthy_edge_interval or config.interval) if pending else config.interval
        else:
            unhealthy = config.unhealthy_interval or config.interval
            base = (config.unhealthy_edge_interval or unhealthy) if pending else unhealthy
    elif passed and not pending:
        base = config.no_traffic_healthy_interval or config.no_traffic_interval
    else:
        base = config.no_traffic_interval
    base_ms = int(base * 1000)
    percent_ms = config.interval_jitter_percent * base_ms // 100
    if percent_ms > 0:
        base_ms += rng.getrandbits(64) % percent_ms
    jitter_ms = int(config.interval_jitter * 1000)
    if jitter_ms > 0:
        base_ms += rng.getrandbits(64) % jitter_ms
    return max(1, base_ms) / 1000.0


def initial_delay(config: HealthCheckConfig, rng: random.Random) -> float:
    """Seconds before a host's first check: immediately, or a random part of initial_jitter."""
    jitter_ms = int(config.initial_jitter * 1000)
    if jitter_ms == 0:
        return 0.0
    return max(1, rng.getrandbits(64) % jitter_ms) / 1000.0
