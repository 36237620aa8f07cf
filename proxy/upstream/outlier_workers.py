"""Outlier detection once per proxy under `--concurrency N`: every worker's outcomes, one detector.

Envoy's outlier detector is one per cluster: each worker thread counts every upstream outcome
into the cluster's one monitor per host (atomic counters); a monitor reaching a
consecutive-error threshold tells the main thread, which ejects (and un-ejects on its
interval), and the ejection reaches every worker's host set. So a host is ejected after
`consecutive_5xx` failures in a row whichever workers saw them, and outlier_detection.*
counts one detector's decisions. Tulle's workers are processes, so (the roles of
proxy/upstream/health/workers.py):
- a single worker: LOCAL_OUTLIER, a plain OutlierDetector per cluster;
- the leader: LeaderOutlierDetectors gives each cluster a plain OutlierDetector that also
  counts every follower's reported outcomes (`apply`), and sends the cluster's ejected hosts
  (an EjectionReport naming all of them by (address, port)) to every follower each time they
  change;
- a follower: FollowerOutlierDetectors gives each cluster a ReplicatedOutlierDetector, which
  decides nothing: its `record` adds the outcome to the worker's OutcomeBatch, and the
  leader's ejections are set on the cluster's hosts in one step (one HostSet.health_changed).

Batching, i.e. the per-request cost in a follower: `record` is a list append and a flag test.
The batch goes to the leader in one frame (OutcomeRuns: runs of equal outcomes of a host, in
the order the worker saw them; with successes only, one run per host) at the end of the event-loop turn in which an error (a 5xx or a
local-origin failure) was recorded, since an error may complete a streak; with successes only,
within SUCCESS_FLUSH seconds: they only end streaks and feed the interval's success rates, so
they wait and travel many to a frame (no write per request while the upstreams are well).
A worker's outcomes reach the leader in its order (an error's frame carries the successes
before it); across workers the leader interleaves them by arrival, as Envoy's atomic counters
interleave by time.

Stats: the leader's detector counts every detection and ejection and a follower's stay 0, so
/stats (which adds up the workers') shows one detector's counts, as Envoy's; success rates
(/clusters) are the leader's, over every worker's requests. A passing active health check
un-ejects on the leader (which probes, health/workers.py); a follower ignores its replicated
passes.

Replacement: reports name the cluster. The leader sends only the reports of the current
detector of each name; a new detector starts with an empty report (a replaced cluster starts
with nothing ejected, as in Envoy) and a removed cluster's sends `removed`. A follower keeps the
latest report of each name, so a cluster or host that it gets later than the leader (CDS and
EDS are forwarded after the leader applied them) takes the leader's ejections at once.

Sans-IO: the flush timers and the frames' transport are the caller's (`flush_soon`,
`flush_later`, `send`); `now` comes in as an argument.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.outlier import OutlierConfig, OutlierDetector

SUCCESS_FLUSH = 0.05   # seconds a follower's successes may wait for a frame to the leader
LOCAL_ORIGIN = 0       # an OutcomeRun's status for a local-origin failure (record's None)

Address = tuple[str, int]


class OutcomeRun(NamedTuple):
    """`times` outcomes alike in a row of one host: a status (every success is 200) or LOCAL_ORIGIN."""

    cluster: str
    address: str
    port: int
    status: int
    times: int


@dataclass(frozen=True, slots=True)
class EjectionReport:
    """The hosts the leader's detector of `cluster` has ejected now, all of them."""

    cluster: str
    ejected: tuple[Address, ...]
    removed: bool = False   # the leader has no such cluster any more


class OutlierDetectors(Protocol):
    def detector(self, config: OutlierConfig, host_set: HostSet, rng: random.Random, cluster: str,
                 on_change: Callable[[], None]) -> OutlierDetector:
        """The cluster's detector; `on_change` after each change of its hosts' ejections."""
        ...

    def stopped(self, cluster: str, detector: OutlierDetector) -> None:
        """The cluster that `detector` serves was stopped (replaced or removed)."""
        ...


class LocalOutlierDetectors:
    """The one worker detects, and tells no one."""

    def detector(self, config: OutlierConfig, host_set: HostSet, rng: random.Random, cluster: str,
                 on_change: Callable[[], None]) -> OutlierDetector:
        return OutlierDetector(config, host_set, rng, on_change)

    def stopped(self, cluster: str, detector: OutlierDetector) -> None:
        pass


LOCAL_OUTLIER = LocalOutlierDetectors()


class LeaderOutlierDetectors:
    """The leader detects over every worker's outcomes, and `send`s each cluster's ejections."""

    def __init__(self, send: Callable[[EjectionReport], None]) -> None:
        self._send = send
        self._current: dict[str, tuple[OutlierDetector, HostSet]] = {}

    def detector(self, config: OutlierConfig, host_set: HostSet, rng: random.Random, cluster: str,
                 on_change: Callable[[], None]) -> OutlierDetector:
        detector = OutlierDetector(config, host_set, rng, on_change)
        reported: list[tuple[Address, ...]] = [()]

        def health_changed() -> None:
            # after the detector's own subscriber: an ejection, a return, or an ejected host
            # that left the cluster (a follower must not keep it ejected should it come back)
            ejected = tuple((host.address, host.port) for host in detector.ejected())
            current = self._current.get(cluster)
            if ejected != reported[0] and current is not None and current[0] is detector:
                reported[0] = ejected
                self._send(EjectionReport(cluster, ejected))

        host_set.subscribe(health_changed)
        self._current[cluster] = (detector, host_set)
        self._send(EjectionReport(cluster, ()))
        return detector

    def stopped(self, cluster: str, detector: OutlierDetector) -> None:
        # A cluster replaced by CDS stops after its successor started: nothing is removed.
        current = self._current.get(cluster)
        if current is not None and current[0] is detector:
            del self._current[cluster]
            self._send(EjectionReport(cluster, (), removed=True))

    def apply(self, runs: Iterable[OutcomeRun], now: float) -> None:
        """A follower's outcomes, counted as if they happened here now."""
        for run in runs:
            current = self._current.get(run.cluster)
            if current is None:
                continue
            detector, host_set = current
            host = host_set.host(run.address, run.port)
            if host is not None:   # not a host the leader dropped meanwhile
                detector.record_run(host, run.status if run.status != LOCAL_ORIGIN else None, run.times, now)


class OutcomeBatch:
    """A follower's outcomes on their way to the leader (see the module's rules)."""

    def __init__(self, send: Callable[[list[OutcomeRun]], None],
                 flush_soon: Callable[[Callable[[], None]], object],
                 flush_later: Callable[[float, Callable[[], None]], object]) -> None:
        """`send` a batch; `flush_soon(callback)` at the end of this loop turn,
        `flush_later(delay, callback)`."""
        self.pending: list[tuple[str, Host, int | None]] = []
        self._send = send
        self._flush_soon = flush_soon
        self._flush_later = flush_later
        self._soon = False    # a flush at the end of this loop turn is scheduled
        self._later = False   # a flush within SUCCESS_FLUSH is scheduled
        self._errors = False  # an error is pending

    def add(self, cluster: str, host: Host, status: int | None) -> None:
        self.pending.append((cluster, host, status))
        if status is None or status >= 500:
            self._errors = True
            if not self._soon:
                self._soon = True
                self._flush_soon(self._flush_now)
        elif not self._later:
            self._later = True
            self._flush_later(SUCCESS_FLUSH, self._flush_delayed)

    def _flush_now(self) -> None:
        self._soon = False
        self.flush()

    def _flush_delayed(self) -> None:
        self._later = False
        self.flush()

    def flush(self) -> None:
        """Send what is pending: as runs in order, or with successes only (whose order
        changes nothing), one run per host and status."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        errors, self._errors = self._errors, False
        if not errors:
            hosts: dict[tuple[str, Host], int] = {}
            for (cluster, host, _), times in Counter(pending).items():   # (counted in C)
                hosts[(cluster, host)] = hosts.get((cluster, host), 0) + times
            self._send([OutcomeRun(cluster, host.address, host.port, 200, times)
                        for (cluster, host), times in hosts.items()])
            return
        runs: list[OutcomeRun] = []
        last: tuple[str, Host, int] | None = None
        count = 0
        for cluster, host, status in pending:
            code = LOCAL_ORIGIN if status is None else status if status >= 500 else 200
            if last is not None and last[0] == cluster and last[1] is host and last[2] == code:
                count += 1
                continue
            if last is not None:
                runs.append(OutcomeRun(last[0], last[1].address, last[1].port, last[2], count))
            last, count = (cluster, host, code), 1
        assert last is not None
        runs.append(OutcomeRun(last[0], last[1].address, last[1].port, last[2], count))
        self._send(runs)


class ReplicatedOutlierDetector(OutlierDetector):
    """A follower cluster's outlier detection: outcomes go to the leader, whose ejections
    are set here. Its own counters and stats stay 0; it never ticks."""

    def __init__(self, config: OutlierConfig, host_set: HostSet, rng: random.Random,
                 on_change: Callable[[], None], cluster: str, replica: FollowerOutlierDetectors) -> None:
        self._cluster = cluster
        self._replica = replica
        self._batch = replica.batch
        super().__init__(config, host_set, rng, on_change)

    def record(self, host: Host, status: int | None, now: float) -> None:
        self._batch.add(self._cluster, host, status)

    def record_run(self, host: Host, status: int | None, count: int, now: float) -> None:
        for _ in range(count):
            self._batch.add(self._cluster, host, status)

    def health_check_passed(self, host: Host, now: float) -> None:
        pass   # the leader probes too, and un-ejects

    def tick(self, now: float) -> None:
        pass   # the leader's interval un-ejects and runs success-rate detection

    def _sync_hosts(self) -> None:
        members_changed = self._host_set.hosts is not self._known_hosts
        super()._sync_hosts()
        self.stats.ejections_active = 0   # the leader's gauge counts ejections
        if members_changed:   # hosts that joined take the leader's word about them
            self.apply(self._replica.kept.get(self._cluster, frozenset()))

    def apply(self, ejected: frozenset[Address]) -> None:
        """Set the leader's ejections on this worker's hosts, in one step."""
        changed = False
        for host in self._host_set.hosts:
            out = (host.address, host.port) in ejected
            if host.outlier_ejected != out:
                host.outlier_ejected = out
                changed = True
        if changed:
            self._notify()


class FollowerOutlierDetectors:
    """A follower detects nothing: its clusters send outcomes (`batch`) and take the
    leader's ejections (`apply`)."""

    def __init__(self, batch: OutcomeBatch) -> None:
        self.batch = batch
        self.kept: dict[str, frozenset[Address]] = {}   # the latest report's ejections, by cluster
        self._current: dict[str, ReplicatedOutlierDetector] = {}

    def detector(self, config: OutlierConfig, host_set: HostSet, rng: random.Random, cluster: str,
                 on_change: Callable[[], None]) -> OutlierDetector:
        detector = ReplicatedOutlierDetector(config, host_set, rng, on_change, cluster, self)
        self._current[cluster] = detector   # a replaced cluster's detector is simply superseded
        return detector

    def stopped(self, cluster: str, detector: OutlierDetector) -> None:
        if self._current.get(cluster) is detector:
            del self._current[cluster]

    def apply(self, report: EjectionReport) -> None:
        if report.removed:
            self.kept.pop(report.cluster, None)
            return
        ejected = self.kept[report.cluster] = frozenset(report.ejected)
        detector = self._current.get(report.cluster)
        if detector is not None:
            detector.apply(ejected)
