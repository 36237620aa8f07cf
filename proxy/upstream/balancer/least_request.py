"""LEAST_REQUEST: Envoy's least-request load balancer.

Rules (Envoy's LeastRequestLoadBalancer, N_CHOICES selection):
- A priority level is drawn by load share first (HostSet.choose_level).
- Equal weights and no explicit `active_request_bias`: "power of N choices".
  Draw `choice_count` hosts uniformly at random (with replacement) and keep the
  first one seen with the strictly fewest `active_requests`. Two choices already
  avoid the herd effect of always picking the global minimum (every proxy would
  pile onto the same idle host) while still steering load away from busy hosts.
- Unequal weights, or `active_request_bias` set explicitly: the EDF scheduler of
  round robin, with each host's effective weight computed when it is (re)inserted
  as `weight / (active_requests + 1) ** active_request_bias` (bias default 1.0;
  bias 0 is plain weighted round robin).
- Slow start (balancer/slow_start.py) scales the effective weight of warming hosts
  and, while any host warms up, forces the EDF schedule.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.balancer.edf import EdfScheduler
from proxy.upstream.balancer.levelled import SlottedBalancer, Source
from proxy.upstream.balancer.round_robin import weights_equal
from proxy.upstream.balancer.slow_start import SlowStart, SlowStartConfig
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


@dataclass(frozen=True, slots=True)
class LeastRequestConfig:
    choice_count: int = 2
    active_request_bias: float = 1.0
    bias_configured: bool = False
    slow_start: SlowStartConfig | None = None

    @classmethod
    def from_proto(
        cls, message: Cluster.LeastRequestLbConfig | None, path: str = "least_request_lb_config") -> LeastRequestConfig:
        """From `Cluster.LeastRequestLbConfig`."""
        if message is None:
            return cls()
        reject_unsupported(message, path, ("choice_count", "active_request_bias", "slow_start_config"))
        choice_count = 2
        if message.HasField("choice_count"):
            choice_count = message.choice_count.value
            if choice_count < 2:
                raise ConfigError(f"{path}.choice_count", f"must be at least 2, got {choice_count}")
        bias = 1.0
        configured = message.HasField("active_request_bias")
        if configured:
            runtime = message.active_request_bias
            reject_unsupported(runtime, f"{path}.active_request_bias", ("default_value",))
            bias = runtime.default_value
            if bias < 0.0 or bias != bias:
                raise ConfigError(f"{path}.active_request_bias.default_value", f"must be >= 0, got {bias}")
        slow_start = None
        if message.HasField("slow_start_config"):
            slow_start = SlowStartConfig.from_proto(message.slow_start_config, f"{path}.slow_start_config")
        return cls(
            choice_count=choice_count, active_request_bias=bias, bias_configured=configured, slow_start=slow_start
        )


class _Table:
    __slots__ = ("edf", "hosts")

    def __init__(self, hosts: tuple[Host, ...], edf: EdfScheduler[Host] | None) -> None:
        self.hosts = hosts
        self.edf = edf


class LeastRequestBalancer(SlottedBalancer[_Table]):
    __slots__ = ("_choices", "_config", "_getrandbits", "_seed", "_slow_start", "_warming")

    def __init__(
        self,
        host_set: HostSet,
        rng: random.Random,
        config: LeastRequestConfig | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        seed = rng.getrandbits(64)
        super().__init__(host_set, seed)
        self._config = config or LeastRequestConfig()
        slow_start = self._config.slow_start
        if slow_start is not None and clock is None:
            raise ValueError("slow start needs a clock")
        self._slow_start = SlowStart(slow_start, clock) if slow_start is not None and clock is not None else None
        self._choices = range(self._config.choice_count - 1)
        self._getrandbits = rng.getrandbits
        self._seed = seed
        self._warming = False
        self.hosts_changed()

    def _effective_weight(self, host: Host) -> float:
        bias = self._config.active_request_bias
        if bias == 0.0:
            weight = float(host.weight)
        elif bias == 1.0:
            weight = host.weight / (host.active_requests + 1)
        else:
            weight = host.weight / (host.active_requests + 1) ** bias
        slow_start = self._slow_start
        if slow_start is not None and slow_start.active():
            return slow_start.weight(host, weight)
        return weight

    def _make_table(self, hosts: tuple[Host, ...], source: Source) -> _Table:
        weighted = len(hosts) > 1 and (self._warming or self._config.bias_configured or not weights_equal(hosts))
        edf = EdfScheduler(hosts, self._effective_weight, picks=self._seed & 0xFFFFFFFF) if weighted else None
        return _Table(hosts, edf)

    def hosts_changed(self) -> None:
        self._warming = False
        if self._slow_start is not None:
            self._slow_start.hosts_seen(self._host_set.hosts)
            self._warming = self._slow_start.active()
        self._rebuild()

    def choose(self, hash_key: int | None = None) -> Host | None:
        rand = self._getrandbits
        table = self._single
        if table is None:
            table = self._slow_table(rand(64))
            if table is None:
                return None
        elif self._single_panic:
            self.lb_healthy_panic += 1
        edf = table.edf
        if edf is not None:
            return edf.pick()
        hosts = table.hosts
        n = len(hosts)
        if n == 0:
            return None
        best = hosts[rand(64) % n]
        for _ in self._choices:
            sampled = hosts[rand(64) % n]
            if sampled.active_requests < best.active_requests:
                best = sampled
        return best
