"""What the leader worker tells the followers about its health checks (`--concurrency N`).

A report is about one cluster, named by its name; its hosts are named by (address, port),
since Host objects are per worker. Rules of the reports a HealthReporter sends (the leader's
side; proxy/upstream/health/replica.py applies them, proxy/upstream/health/workers.py says
why):
- a *delta* (`full` false) for one host each time its check result matters to a follower:
  its health_check_failed (under all the cluster's checks) flipped, or its first result came
  (it is no longer pending); a passing check that changes nothing is not sent (outlier
  un-ejection on a passing check is the leader's, proxy/upstream/outlier_workers.py);
- the *whole cluster* (`full`: every host the leader has, replacing what the follower
  kept) once every host had its first result (`initialized`: the followers' cluster
  warming ends), and again whenever the leader's membership of the cluster changes
  after that (so hosts the leader dropped are forgotten);
- `removed` when the leader's cluster of that name is gone (not merely replaced).
Before the first round completes nothing whole is sent: a cluster the leader is warming
may replace one of the same name the followers still serve, whose hosts must not all turn
failed in the meantime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet


class HostHealth(NamedTuple):
    address: str
    port: int
    failed: bool  # the leader's Host.health_check_failed


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    cluster: str
    hosts: tuple[HostHealth, ...]
    full: bool = False  # `hosts` is the whole cluster, not a change
    initialized: bool = False  # the leader's first round of checks is complete
    removed: bool = False  # the leader has no such cluster any more


class HealthReporter:
    """One leader HealthChecker's results as ClusterHealth reports, handed to `send`."""

    def __init__(self, cluster: str, host_set: HostSet, send: Callable[[ClusterHealth], None],
                 on_stop: Callable[[HealthReporter], None] | None = None, checks: int = 1) -> None:
        """`checks`: how many HealthCheckers of the cluster report here (one per health check)."""
        self.cluster = cluster
        self.initialized = False
        self._incomplete = checks
        self._host_set = host_set
        self._send = send
        self._on_stop = on_stop

    def checked(self, host: Host, changed: bool) -> None:
        """A check of `host` completed; `changed`: its flag flipped or it was its first."""
        if changed:
            self._send(ClusterHealth(self.cluster, (HostHealth(host.address, host.port, host.health_check_failed),),
                                     initialized=self.initialized))

    def complete(self) -> None:
        """Every host had its first result from one of the checks; the first round is
        complete once every check's is."""
        self._incomplete -= 1
        if self._incomplete > 0:
            return
        self.initialized = True
        self._send(self.whole())

    def hosts_changed(self) -> None:
        if self.initialized:
            self._send(self.whole())

    def stopped(self) -> None:
        if self._on_stop is not None:
            self._on_stop(self)

    def whole(self) -> ClusterHealth:
        hosts = tuple(HostHealth(host.address, host.port, host.health_check_failed)
                      for host in self._host_set.hosts)
        return ClusterHealth(self.cluster, hosts, full=True, initialized=self.initialized)
