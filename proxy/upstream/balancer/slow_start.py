"""Slow start: a host that just joined (or just passed its health check again)
gets a growing share of the traffic instead of its full share at once
(Envoy's slow_start_config; Istio's warmupDurationSecs).

Rules (Envoy's EdfLoadBalancerBase):
- A host's slow start begins at its last health-check pass (`Host.last_hc_pass_time`),
  or, without active health checking, when the balancer first sees it.
- While `now - start < slow_start_window`, its weight is scaled by
  `max(time_factor ** (1 / aggression), min_weight_percent / 100)` with
  `time_factor = max(1 ms, now - start) / window`; aggression 1 (default) is linear.
  min_weight_percent defaults to 10.
- While any host is in its window, round robin and least request use their
  weighted (EDF) schedule even when the configured weights are equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.host import Host


@dataclass(frozen=True, slots=True)
class SlowStartConfig:
    window: float
    aggression: float = 1.0
    min_weight_percent: float = 10.0

    @classmethod
    def from_proto(cls, message: Any, path: str) -> SlowStartConfig:
        """From `Cluster.SlowStartConfig`."""
        reject_unsupported(message, path, ("slow_start_window", "aggression", "min_weight_percent"))
        if not message.HasField("slow_start_window"):
            raise ConfigError(f"{path}.slow_start_window", "is required")
        window = message.slow_start_window.seconds + message.slow_start_window.nanos / 1e9
        if window <= 0:
            raise ConfigError(f"{path}.slow_start_window", f"must be positive, got {window}s")
        aggression = 1.0
        if message.HasField("aggression"):
            reject_unsupported(message.aggression, f"{path}.aggression", ("default_value", "runtime_key"))
            aggression = message.aggression.default_value
            if not aggression > 0:
                raise ConfigError(f"{path}.aggression.default_value", f"must be > 0, got {aggression}")
        minimum = message.min_weight_percent.value if message.HasField("min_weight_percent") else 10.0
        if not 0.0 <= minimum <= 100.0:
            raise ConfigError(f"{path}.min_weight_percent", f"must be within 0..100, got {minimum}")
        return cls(window, aggression, minimum)


class SlowStart:
    """Which hosts are warming up, and their scaled weights, on an injected clock."""

    __slots__ = ("_clock", "_config", "_latest_start", "_started")

    def __init__(self, config: SlowStartConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._started: dict[Host, float] = {}
        # Envoy starts the balancer's own clock at construction: its first hosts warm up too.
        self._latest_start = clock()

    def hosts_seen(self, hosts: tuple[Host, ...]) -> None:
        """Note when each healthy host's slow start began (call with all the cluster's
        hosts on every host change; hosts no longer present are forgotten)."""
        now = self._clock()
        present = set(hosts)
        started = {h: t for h, t in self._started.items() if h in present}
        self._started = started
        for host in hosts:
            if not host.healthy:
                continue
            start = host.last_hc_pass_time
            if start is None:
                start = started.setdefault(host, now)
            else:
                started[host] = start
            if start > self._latest_start and now - start <= self._config.window:
                self._latest_start = start

    def active(self) -> bool:
        """Whether some host may still be in its window."""
        return self._clock() - self._latest_start <= self._config.window

    def weight(self, host: Host, weight: float) -> float:
        start = self._started.get(host) if host.last_hc_pass_time is None else host.last_hc_pass_time
        if start is None or not host.healthy:
            return weight
        config = self._config
        elapsed = self._clock() - start
        if elapsed >= config.window:
            return weight
        factor = max(0.001, elapsed) / config.window
        if config.aggression != 1.0:
            factor = factor ** (1.0 / config.aggression)
        return weight * max(factor, config.min_weight_percent / 100.0)
