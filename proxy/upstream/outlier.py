"""Outlier detection: Envoy's passive health checking of a cluster's hosts.

Rules (Envoy's outlier DetectorImpl):
- The router reports every upstream outcome with `record()`: a response status,
  or None for a local-origin failure (connect failure, reset, timeout). By
  default None counts as 503, as Envoy maps it.
- With `split_external_local_origin_errors`, local-origin events are kept apart:
  None bumps a host's consecutive local-origin failures (threshold
  `consecutive_local_origin_failure`, default 5, enforcing 100%) and its
  local-origin success rate; a response is a local-origin success (the connection
  worked) and, on the external side, its status. Connect failures then never
  count as 5xx.
- Consecutive 5xx: every 5xx bumps a host's counter, anything else resets it;
  when it reaches `consecutive_5xx` (default 5) the host is detected.
  Consecutive gateway failure: the same for 502/503/504 (a non-gateway 5xx resets
  it), threshold `consecutive_gateway_failure` (default 5).
- Success rate (every interval, for hosts with at least `success_rate_request_volume`
  requests in the last interval, if there are at least `success_rate_minimum_hosts`
  of them): a host whose success rate is below mean - stdev_factor/1000 * stdev
  is detected. Failure percentage: the same hosts (volume/minimum hosts of its
  own) are detected when 100 - success rate >= `failure_percentage_threshold`.
  With the split, both also run over the local-origin counters (enforcing
  `enforcing_local_origin_success_rate` 100, `enforcing_failure_percentage_local_origin` 0).
- Detection becomes ejection only when (a) the ejected share *after* this
  ejection stays within `max_ejection_percent` (default 10) of all hosts, or
  `always_eject_one_host` is set and nothing is ejected yet — otherwise
  `ejections_overflow` grows; and (b) a random draw passes the type's
  `enforcing_*` percentage (defaults: 5xx 100, gateway 0, success rate 100,
  failure percentage 0). Detected-but-not-enforced still resets the counter.
- An ejected host stays out for min(base_ejection_time * backoff, max_ejection_time)
  plus a random jitter (0..max_ejection_time_jitter). `backoff` grows by one per
  ejection (capped once it passes max_ejection_time) and shrinks by one on every
  interval the host spends healthy after its last return, so a flapping host
  stays out longer and longer, and a recovered one is forgiven.
- Each host's success rate of the interval that just ended (what admin /clusters shows as
  `success_rate`, and `local_origin_success_rate` with the split) is -1 unless the cluster
  has at least min(success_rate_minimum_hosts, failure_percentage_minimum_hosts) hosts and
  this host, not ejected, had at least min(success_rate_request_volume,
  failure_percentage_request_volume) requests in it; it is reset every interval.
- Un-ejection is only checked on interval ticks (`tick(now)`, to be called every
  `config.interval` seconds). A successful active health check un-ejects at once
  (`successful_active_health_check_uneject_host`, default true).

Theory of operation: one small monitor per host holds its counters; `record()`
is a dict lookup and a few integer operations. Ejections flip
`Host.outlier_ejected` and then call `HostSet.health_changed()` (which rebuilds
the balancers) and `on_change`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


class EjectionType(enum.Enum):
    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    SUCCESS_RATE = "success_rate"
    FAILURE_PERCENTAGE = "failure_percentage"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
    SUCCESS_RATE_LOCAL_ORIGIN = "local_origin_success_rate"
    FAILURE_PERCENTAGE_LOCAL_ORIGIN = "local_origin_failure_percentage"


_GATEWAY_ERRORS = frozenset((502, 503, 504))
_DEFAULT_BASE_EJECTION_TIME = 30.0
_DEFAULT_MAX_EJECTION_TIME = 300.0


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    interval: float = 10.0
    base_ejection_time: float = _DEFAULT_BASE_EJECTION_TIME
    max_ejection_time: float = _DEFAULT_MAX_EJECTION_TIME
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    enforcing_success_rate: int = 100
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    enforcing_failure_percentage: int = 0
    successful_active_health_check_uneject_host: bool = True
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_local_origin_success_rate: int = 100
    enforcing_failure_percentage_local_origin: int = 0

    def __post_init__(self) -> None:
        if self.max_ejection_time < self.base_ejection_time:
            raise ConfigError("max_ejection_time", "cannot be smaller than base_ejection_time")

    def enforcing(self, kind: EjectionType) -> int:
        return {
            EjectionType.CONSECUTIVE_5XX: self.enforcing_consecutive_5xx,
            EjectionType.CONSECUTIVE_GATEWAY_FAILURE: self.enforcing_consecutive_gateway_failure,
            EjectionType.SUCCESS_RATE: self.enforcing_success_rate,
            EjectionType.FAILURE_PERCENTAGE: self.enforcing_failure_percentage,
            EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE: self.enforcing_consecutive_local_origin_failure,
            EjectionType.SUCCESS_RATE_LOCAL_ORIGIN: self.enforcing_local_origin_success_rate,
            EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN: self.enforcing_failure_percentage_local_origin,
        }[kind]

    @classmethod
    def from_proto(cls, message: OutlierDetection, path: str = "outlier_detection") -> OutlierConfig:
        """From `Cluster.outlier_detection`; unset fields take Envoy's defaults."""
        durations = ("interval", "base_ejection_time", "max_ejection_time", "max_ejection_time_jitter")
        percents = (
            "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
            "enforcing_success_rate", "failure_percentage_threshold", "enforcing_failure_percentage",
            "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
            "enforcing_failure_percentage_local_origin",
        )
        counts = (
            "consecutive_5xx", "consecutive_gateway_failure", "success_rate_minimum_hosts",
            "success_rate_request_volume", "success_rate_stdev_factor",
            "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
            "consecutive_local_origin_failure",
        )
        flags = ("always_eject_one_host", "successful_active_health_check_uneject_host")
        reject_unsupported(message, path, (*durations, *percents, *counts, *flags, "split_external_local_origin_errors"))
        values: dict[str, object] = {}
        for name in durations:
            if message.HasField(name):
                d = getattr(message, name)
                seconds = d.seconds + d.nanos / 1e9
                if seconds < 0 or (seconds == 0 and name in ("interval", "base_ejection_time")):
                    raise ConfigError(f"{path}.{name}", f"must be positive, got {seconds}s")
                values[name] = seconds
        for name in percents + counts + flags:
            if message.HasField(name):
                value = getattr(message, name).value
                if name in percents and value > 100:
                    raise ConfigError(f"{path}.{name}", f"is a percentage (0..100), got {value}")
                values[name] = value
        values["split_external_local_origin_errors"] = message.split_external_local_origin_errors
        if "max_ejection_time" not in values:
            # Envoy: the default maximum is 300 s, or the base time if that is larger.
            base = values.get("base_ejection_time", _DEFAULT_BASE_EJECTION_TIME)
            assert isinstance(base, float)
            values["max_ejection_time"] = max(_DEFAULT_MAX_EJECTION_TIME, base)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ConfigError as error:
            raise error.under(path) from None


@dataclass(slots=True)
class _HostMonitor:
    consecutive_5xx: int = 0
    consecutive_gateway_failure: int = 0
    consecutive_local_origin_failure: int = 0
    num_ejections: int = 0
    backoff: int = 0
    last_ejection: float = 0.0
    last_unejection: float | None = None
    jitter: float = 0.0
    # Success-rate buckets: `current` is written during an interval, `previous`
    # holds the interval that just ended and is what success-rate detection reads.
    current_success: int = 0
    current_total: int = 0
    previous_success: int = 0
    previous_total: int = 0
    # The same for local-origin events (only with split_external_local_origin_errors).
    local_current_success: int = 0
    local_current_total: int = 0
    local_previous_success: int = 0
    local_previous_total: int = 0
    # The last interval's success rate in percent, as admin /clusters shows it: -1 unless
    # that interval's detection had enough hosts and this host enough requests.
    success_rate: float = -1.0
    local_success_rate: float = -1.0


@dataclass(slots=True)
class OutlierStats:
    """Envoy's `outlier_detection.*` stats of one cluster."""

    ejections_active: int = 0
    ejections_overflow: int = 0
    ejections_enforced_total: int = 0
    ejections_total: int = 0  # deprecated in Envoy, still emitted
    ejections_consecutive_5xx: int = 0  # deprecated in Envoy, still emitted
    ejections_success_rate: int = 0  # deprecated in Envoy, still emitted
    detected: dict[EjectionType, int] = field(default_factory=lambda: dict.fromkeys(EjectionType, 0))
    enforced: dict[EjectionType, int] = field(default_factory=lambda: dict.fromkeys(EjectionType, 0))

    def as_dict(self) -> dict[str, int]:
        out = {
            "outlier_detection.ejections_active": self.ejections_active,
            "outlier_detection.ejections_overflow": self.ejections_overflow,
            "outlier_detection.ejections_enforced_total": self.ejections_enforced_total,
            "outlier_detection.ejections_total": self.ejections_total,
            "outlier_detection.ejections_consecutive_5xx": self.ejections_consecutive_5xx,
            "outlier_detection.ejections_success_rate": self.ejections_success_rate,
        }
        for kind in EjectionType:
            out[f"outlier_detection.ejections_detected_{kind.value}"] = self.detected[kind]
            out[f"outlier_detection.ejections_enforced_{kind.value}"] = self.enforced[kind]
        # Envoy always emits this; degradation monitors (extensions) are not supported.
        for name in _ALWAYS_ZERO:
            out[f"outlier_detection.{name}"] = 0
        return out


_ALWAYS_ZERO = ("ejections_detected_degradation",)


class OutlierDetector:
    def __init__(
        self,
        config: OutlierConfig,
        host_set: HostSet,
        rng: random.Random,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.stats = OutlierStats()
        self.on_change = on_change
        self._host_set = host_set
        self._rng = rng
        self._monitors: dict[Host, _HostMonitor] = {}
        self._known_hosts: tuple[Host, ...] = ()
        # The last interval's success-rate mean and ejection threshold (admin /clusters'
        # `outlier::` lines), by local origin or not: -1 unless success-rate detection ran.
        self.success_rate_average = {False: -1.0, True: -1.0}
        self.success_rate_ejection_threshold = {False: -1.0, True: -1.0}
        self._sync_hosts()
        host_set.subscribe(self._sync_hosts)

    @property
    def ejections_active(self) -> int:
        return self.stats.ejections_active

    def _sync_hosts(self) -> None:
        hosts = self._host_set.hosts
        if hosts is self._known_hosts:
            return  # a health change only
        self._known_hosts = hosts
        current = set(hosts)
        for gone in [h for h in self._monitors if h not in current]:
            del self._monitors[gone]
            if gone.outlier_ejected:
                self.stats.ejections_active -= 1
        for host in hosts:
            if host not in self._monitors:
                self._monitors[host] = _HostMonitor()

    # -- events -----------------------------------------------------------------

    def record(self, host: Host, status: int | None, now: float) -> None:
        """One upstream outcome: a response status, or None for connect failure,
        reset or timeout (a local-origin failure; 503 unless errors are split)."""
        m = self._monitors.get(host)
        if m is None:
            return  # the host left the cluster while its request was in flight
        if self.config.split_external_local_origin_errors:
            m.local_current_total += 1
            if status is None:
                m.consecutive_local_origin_failure += 1
                if m.consecutive_local_origin_failure == self.config.consecutive_local_origin_failure:
                    self._consecutive_error(host, m, EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE, now)
                return
            m.local_current_success += 1
            m.consecutive_local_origin_failure = 0
        m.current_total += 1
        code = 503 if status is None else status
        if 500 <= code <= 599:
            if code in _GATEWAY_ERRORS:
                m.consecutive_gateway_failure += 1
                if m.consecutive_gateway_failure == self.config.consecutive_gateway_failure:
                    self._consecutive_error(host, m, EjectionType.CONSECUTIVE_GATEWAY_FAILURE, now)
            else:
                m.consecutive_gateway_failure = 0
            m.consecutive_5xx += 1
            if m.consecutive_5xx == self.config.consecutive_5xx:
                self._consecutive_error(host, m, EjectionType.CONSECUTIVE_5XX, now)
        else:
            m.current_success += 1
            m.consecutive_5xx = 0
            m.consecutive_gateway_failure = 0

    def record_run(self, host: Host, status: int | None, count: int, now: float) -> None:
        """`count` outcomes alike in a row (another worker's, reported in a batch): the same
        as `count` calls of `record`, a run of successes in one step."""
        m = self._monitors.get(host)
        if m is None:
            return
        if status is None or status >= 500:
            for _ in range(count):
                self.record(host, status, now)
            return
        if self.config.split_external_local_origin_errors:
            m.local_current_total += count
            m.local_current_success += count
            m.consecutive_local_origin_failure = 0
        m.current_total += count
        m.current_success += count
        m.consecutive_5xx = 0
        m.consecutive_gateway_failure = 0

    def ejected(self) -> tuple[Host, ...]:
        return tuple(host for host in self._monitors if host.outlier_ejected)

    def health_check_passed(self, host: Host, now: float) -> None:
        """An active health check succeeded: un-eject at once (if so configured)."""
        m = self._monitors.get(host)
        if (
            m is not None
            and self.config.successful_active_health_check_uneject_host
            and host.outlier_ejected
            and not host.health_check_failed
        ):
            self._uneject(host, m, now)
            self._notify()

    def success_rate(self, host: Host, local: bool = False) -> float:
        """The host's success rate of the last interval, in percent, or -1 (see the rules)."""
        m = self._monitors.get(host)
        if m is None:
            return -1.0
        return m.local_success_rate if local else m.success_rate

    def tick(self, now: float) -> None:
        """Interval processing: return hosts whose time is up, run success-rate and
        failure-percentage detection over the interval that just ended, and forgive
        hosts that stayed healthy for an interval."""
        config = self.config
        changed = False
        for host, m in self._monitors.items():
            if host.outlier_ejected:
                out_for = min(config.base_ejection_time * m.backoff, config.max_ejection_time)
                if out_for + m.jitter <= now - m.last_ejection:
                    self._uneject(host, m, now)
                    changed = True
            m.previous_success, m.previous_total = m.current_success, m.current_total
            m.current_success = m.current_total = 0
            m.local_previous_success, m.local_previous_total = m.local_current_success, m.local_current_total
            m.local_current_success = m.local_current_total = 0
            m.success_rate = m.local_success_rate = -1.0
        changed = self._success_rate_ejections(now, local=False) or changed
        if config.split_external_local_origin_errors:
            changed = self._success_rate_ejections(now, local=True) or changed
        for host, m in self._monitors.items():
            if (
                not host.outlier_ejected
                and m.last_unejection is not None
                and now - m.last_unejection >= config.interval
                and m.backoff > 0
            ):
                m.backoff -= 1
        if changed:
            self._notify()

    # -- rules ------------------------------------------------------------------

    def _consecutive_error(self, host: Host, m: _HostMonitor, kind: EjectionType, now: float) -> None:
        if host.outlier_ejected:
            return
        self.stats.detected[kind] += 1
        if self._eject(host, m, kind, now):
            self._notify()
        if kind is EjectionType.CONSECUTIVE_5XX:
            self.stats.ejections_consecutive_5xx += 1
            m.consecutive_5xx = 0
        elif kind is EjectionType.CONSECUTIVE_GATEWAY_FAILURE:
            m.consecutive_gateway_failure = 0
        else:
            m.consecutive_local_origin_failure = 0

    def _success_rate_ejections(self, now: float, local: bool) -> bool:
        config = self.config
        self.success_rate_average[local] = self.success_rate_ejection_threshold[local] = -1.0
        n = len(self._monitors)
        if n < config.success_rate_minimum_hosts and n < config.failure_percentage_minimum_hosts:
            return False
        by_rate: list[tuple[Host, _HostMonitor, float]] = []
        by_failure: list[tuple[Host, _HostMonitor, float]] = []
        total_rate = 0.0
        for host, m in self._monitors.items():
            if local:
                successes, total = m.local_previous_success, m.local_previous_total
            else:
                successes, total = m.previous_success, m.previous_total
            if host.outlier_ejected or total == 0:
                continue
            rate = successes * 100.0 / total
            if total >= min(config.success_rate_request_volume, config.failure_percentage_request_volume):
                if local:
                    m.local_success_rate = rate
                else:
                    m.success_rate = rate
            if total >= config.success_rate_request_volume:
                by_rate.append((host, m, rate))
                total_rate += rate
            if total >= config.failure_percentage_request_volume:
                by_failure.append((host, m, rate))
        rate_kind = EjectionType.SUCCESS_RATE_LOCAL_ORIGIN if local else EjectionType.SUCCESS_RATE
        failure_kind = EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN if local else EjectionType.FAILURE_PERCENTAGE
        changed = False
        if by_rate and len(by_rate) >= config.success_rate_minimum_hosts:
            mean = total_rate / len(by_rate)
            stdev = (sum((r - mean) ** 2 for _, _, r in by_rate) / len(by_rate)) ** 0.5
            threshold = mean - config.success_rate_stdev_factor / 1000.0 * stdev
            self.success_rate_average[local], self.success_rate_ejection_threshold[local] = mean, threshold
            for host, m, rate in by_rate:
                if rate < threshold:
                    self.stats.ejections_success_rate += 1
                    self.stats.detected[rate_kind] += 1
                    changed = self._eject(host, m, rate_kind, now) or changed
        if by_failure and len(by_failure) >= config.failure_percentage_minimum_hosts:
            for host, m, rate in by_failure:
                if not host.outlier_ejected and 100.0 - rate >= config.failure_percentage_threshold:
                    self.stats.detected[failure_kind] += 1
                    changed = self._eject(host, m, failure_kind, now) or changed
        return changed

    def _eject(self, host: Host, m: _HostMonitor, kind: EjectionType, now: float) -> bool:
        config = self.config
        stats = self.stats
        share_after = 100.0 * (stats.ejections_active + 1) / len(self._monitors)
        allowed = share_after <= config.max_ejection_percent or (
            config.always_eject_one_host and stats.ejections_active == 0
        )
        if not allowed:
            stats.ejections_overflow += 1
            return False
        if kind in (EjectionType.CONSECUTIVE_5XX, EjectionType.SUCCESS_RATE):
            stats.ejections_total += 1
        if self._rng.randrange(100) >= config.enforcing(kind):
            return False
        stats.ejections_active += 1
        stats.ejections_enforced_total += 1
        stats.enforced[kind] += 1
        host.outlier_ejected = True
        m.num_ejections += 1
        m.last_ejection = now
        jitter_ms = int(config.max_ejection_time_jitter * 1000)
        m.jitter = self._rng.randrange(jitter_ms + 1) / 1000.0 if jitter_ms else 0.0
        if m.backoff * config.base_ejection_time < config.max_ejection_time + config.base_ejection_time:
            m.backoff += 1
        return True

    def _uneject(self, host: Host, m: _HostMonitor, now: float) -> None:
        self.stats.ejections_active -= 1
        host.outlier_ejected = False
        # Fresh counters, so that a few errors right after return do not re-eject.
        m.consecutive_5xx = 0
        m.consecutive_gateway_failure = 0
        m.consecutive_local_origin_failure = 0
        m.last_unejection = now

    def _notify(self) -> None:
        self._host_set.health_changed()
        if self.on_change is not None:
            self.on_change()

    def num_ejections(self, host: Host) -> int:
        """How many times `host` has been ejected (for /clusters)."""
        m = self._monitors.get(host)
        return 0 if m is None else m.num_ejections
