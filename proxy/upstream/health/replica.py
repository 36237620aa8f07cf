"""A follower worker's copy of the leader's health checks (`--concurrency N`).

Rules:
- HealthReplica keeps, per cluster name, the latest health the leader reported of each
  (address, port) and whether the leader's first round is complete, whether or not this
  worker has that cluster or host yet: the leader warms a cluster before it forwards the
  CDS update that brings it, and an EDS update can be probed before a follower applies it,
  so a report may come first. A whole report replaces what was kept of its cluster, a
  delta updates it, `removed` forgets it.
- A ReplicatedHealthChecker stands in for each HealthChecker in a follower's cluster with
  health_checks (a group, one per check: a report, which carries each host's health under
  all the checks, reaches the whole group): it never opens a probe connection and its health_check.* stats stay 0
  (the leader's count once in the proxy's totals). Its hosts start failed and pending,
  as under a HealthChecker; a host that appears takes the kept health of its address at
  once; `initialized` (cluster warming) is set when the leader's first round is.
- A report is applied to the cluster's hosts in one step on the event loop: every flag,
  then one HostSet.health_changed() (the balancers rebuild once), then `on_change`; a
  host turning healthy gets `last_hc_pass_time` = now (slow start counts from there).
- A report names hosts this worker may not have (a removal not applied yet here): they
  are only kept.

Sans-IO: reports and the time come in as arguments (`HealthReplica.apply`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.upstream.health.config import HealthCheckConfig
from proxy.upstream.health.prober import HealthCheckStats
from proxy.upstream.health.report import ClusterHealth, HostHealth
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


@dataclass(slots=True)
class KeptHealth:
    """What the leader last said of one cluster."""

    failed: dict[tuple[str, int], bool] = field(default_factory=dict)
    initialized: bool = False


class HealthReplica:
    """Every report from the leader, kept by cluster, and the checkers they apply to."""

    def __init__(self) -> None:
        self.kept: dict[str, KeptHealth] = {}
        # per cluster name, the checkers of the cluster reports now go to (one per health check)
        self._checkers: dict[str, list[ReplicatedHealthChecker]] = {}

    def apply(self, report: ClusterHealth, now: float) -> None:
        name = report.cluster
        if report.removed:
            self.kept.pop(name, None)
            return
        kept = self.kept.get(name)
        if kept is None or report.full:
            kept = self.kept[name] = KeptHealth(initialized=report.initialized)
        kept.initialized = kept.initialized or report.initialized
        for host in report.hosts:
            kept.failed[(host.address, host.port)] = host.failed
        for checker in self._checkers.get(name, ()):
            checker.apply(report.hosts, kept.initialized, now)

    def checker(self, config: HealthCheckConfig, host_set: HostSet, cluster: str,
                on_change: Callable[[], None] | None = None,
                clock: Callable[[], float] | None = None,
                group: list[ReplicatedHealthChecker] | None = None) -> ReplicatedHealthChecker:
        return ReplicatedHealthChecker(self, config, host_set, cluster, on_change, clock, group)

    def attach(self, checker: ReplicatedHealthChecker) -> None:
        """Reports for the checker's cluster now go to its group (a replaced cluster's
        checkers are simply superseded)."""
        self._checkers[checker.cluster] = checker.group

    def detach(self, checker: ReplicatedHealthChecker) -> None:
        if self._checkers.get(checker.cluster) is checker.group:
            del self._checkers[checker.cluster]


class ReplicatedHealthChecker:
    """A follower cluster's active health checking: the leader's results, applied."""

    def __init__(self, replica: HealthReplica, config: HealthCheckConfig, host_set: HostSet, cluster: str,
                 on_change: Callable[[], None] | None = None,
                 clock: Callable[[], float] | None = None,
                 group: list[ReplicatedHealthChecker] | None = None) -> None:
        """`group`: the checkers of the same cluster (one per health check), this one too;
        a report reaches all of them, and the first to apply it sets the flags."""
        self.config = config
        self.group = group if group is not None else [self]
        self.cluster = cluster
        self.stats = HealthCheckStats()  # stays 0: the leader probes
        self.initialized = asyncio.Event()
        self.on_change = on_change
        self._replica = replica
        self._host_set = host_set
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._by_address: dict[tuple[str, int], Host] = {}
        self._known_hosts: tuple[Host, ...] = ()
        self._running = False
        host_set.active_health_checking = True
        host_set.subscribe(self._sync_hosts)

    def start(self) -> None:
        """Mark every host failed and pending, then take what the leader said so far."""
        self._running = True
        for host in self._host_set.hosts:
            host.health_check_failed = True
        self._known_hosts = ()
        self._replica.attach(self)
        self._host_set.health_changed()  # runs _sync_hosts, which applies the kept health

    async def stop(self) -> None:
        self._running = False
        self._replica.detach(self)

    def _sync_hosts(self) -> None:
        hosts = self._host_set.hosts
        if not self._running or hosts is self._known_hosts:
            return
        self._known_hosts = hosts
        self._by_address = {(host.address, host.port): host for host in hosts}
        kept = self._replica.kept.get(self.cluster)
        if kept is not None:
            self.apply(tuple(HostHealth(address, port, failed) for (address, port), failed in kept.failed.items()),
                       kept.initialized, self._clock())
        elif not hosts:
            self.initialized.set()  # nothing to wait for

    def apply(self, hosts: tuple[HostHealth, ...], initialized: bool, now: float) -> None:
        """Set the flags of the hosts this worker has, in one step."""
        changed = False
        for report in hosts:
            host = self._by_address.get((report.address, report.port))
            if host is None:
                continue
            if host.health_check_failed != report.failed:
                host.health_check_failed = report.failed
                if not report.failed:
                    host.last_hc_pass_time = now
                changed = True
        if changed:
            self._host_set.health_changed()
            if self.on_change is not None:
                self.on_change()
        if initialized or not self._host_set.hosts:
            self.initialized.set()
