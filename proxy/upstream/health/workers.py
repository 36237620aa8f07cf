"""Which active health checker each worker's clusters get: probing happens once per proxy.

Envoy runs active health checking once, on its main thread, and every worker sees the same
host health. Tulle's workers under `--concurrency N` are processes, so:
- a single worker (no --concurrency) probes: LOCAL, plain HealthCheckers;
- the leader worker probes: LeaderHealthChecks gives each cluster a HealthChecker per
  health check, all with the cluster's one HealthReporter (report.py), whose reports go to
  every follower as `a` frames over the worker link (proxy/worker_link.py);
- a follower never probes: its HealthReplica (replica.py) gives each cluster a
  ReplicatedHealthChecker per health check, and applies every report the leader sends.
So a host is probed once per interval whatever N is, the health_check.* stats are one
checker's, and /clusters health flags are every worker's common view (a report crosses the
link within a loop turn of each side).

Ordering, the contract with proxy/server.py: the leader opens its follower links before it
starts any cluster, so every report reaches every follower; it forwards a CDS update after
applying it, i.e. after the new clusters warmed, so a follower has their first round's
health when it applies the update (the replica keeps reports for clusters and hosts it does
not have yet; the leader does not resend after updates). A follower's cluster warming waits
for the leader's first round, bounded as a HealthChecker's is (Cluster.start). Should the
leader's warming of a cluster that replaces one of the same name time out, a follower's new
cluster starts from what it kept of the old one (the same addresses, probed moments ago)
until the next reports.

DNS clusters are resolved once too, by the leader (proxy/upstream/dns_workers.py), so every
worker has the hosts the leader probes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from proxy.upstream.health.config import HealthCheckConfig
from proxy.upstream.health.prober import HealthChecker
from proxy.upstream.health.replica import HealthReplica, ReplicatedHealthChecker
from proxy.upstream.health.report import ClusterHealth, HealthReporter
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.tcp_keepalive import TcpKeepalive

ActiveHealthChecker = HealthChecker | ReplicatedHealthChecker


class HealthCheckers(Protocol):
    def checkers(self, configs: Sequence[HealthCheckConfig], host_set: HostSet, rng: random.Random, cluster: str,
                 has_traffic: Callable[[], bool], on_change: Callable[[], None],
                 on_check_passed: Callable[[Host], None] | None,
                 keepalive: TcpKeepalive | None = None) -> list[ActiveHealthChecker]:
        """One checker per health check of the cluster (a host is healthy while all pass)."""
        ...


class LocalHealthChecks:
    """The one worker probes, and tells no one."""

    def checkers(self, configs: Sequence[HealthCheckConfig], host_set: HostSet, rng: random.Random, cluster: str,
                 has_traffic: Callable[[], bool], on_change: Callable[[], None],
                 on_check_passed: Callable[[Host], None] | None,
                 keepalive: TcpKeepalive | None = None) -> list[ActiveHealthChecker]:
        peers: list[HealthChecker] = []
        for config in configs:
            peers.append(HealthChecker(config, host_set, rng, cluster, has_traffic=has_traffic, on_change=on_change,
                                       on_check_passed=on_check_passed, keepalive=keepalive, peers=peers))
        return list(peers)


LOCAL = LocalHealthChecks()


class LeaderHealthChecks:
    """The leader probes, and `send`s every report to the followers."""

    def __init__(self, send: Callable[[ClusterHealth], None]) -> None:
        self._send = send
        self._current: dict[str, HealthReporter] = {}

    def checkers(self, configs: Sequence[HealthCheckConfig], host_set: HostSet, rng: random.Random, cluster: str,
                 has_traffic: Callable[[], bool], on_change: Callable[[], None],
                 on_check_passed: Callable[[Host], None] | None,
                 keepalive: TcpKeepalive | None = None) -> list[ActiveHealthChecker]:
        # One reporter for all the cluster's checks: a report carries each host's health under
        # all of them (Host.health_check_failed), and the first round is complete once every
        # check's is.
        reporter = HealthReporter(cluster, host_set, self._send, on_stop=self._stopped, checks=len(configs))
        self._current[cluster] = reporter
        peers: list[HealthChecker] = []
        for config in configs:
            peers.append(HealthChecker(config, host_set, rng, cluster, has_traffic=has_traffic, on_change=on_change,
                                       on_check_passed=on_check_passed, reporter=reporter, keepalive=keepalive,
                                       peers=peers))
        return list(peers)

    def _stopped(self, reporter: HealthReporter) -> None:
        # A cluster replaced by CDS stops after its successor started: nothing is removed.
        if self._current.get(reporter.cluster) is reporter:
            del self._current[reporter.cluster]
            self._send(ClusterHealth(reporter.cluster, (), removed=True))


class FollowerHealthChecks:
    """A follower never probes: its clusters take the leader's reports (`replica`)."""

    def __init__(self, replica: HealthReplica | None = None) -> None:
        self.replica = replica or HealthReplica()

    def checkers(self, configs: Sequence[HealthCheckConfig], host_set: HostSet, rng: random.Random, cluster: str,
                 has_traffic: Callable[[], bool], on_change: Callable[[], None],
                 on_check_passed: Callable[[Host], None] | None,
                 keepalive: TcpKeepalive | None = None) -> list[ActiveHealthChecker]:
        # one stand-in per check, so the cluster's health_check stats have the leader's names;
        # no passes to pass on: the leader's outlier detector un-ejects (outlier_workers.py)
        group: list[ReplicatedHealthChecker] = []
        for config in configs:
            group.append(self.replica.checker(config, host_set, cluster, on_change, group=group))
        return list(group)
