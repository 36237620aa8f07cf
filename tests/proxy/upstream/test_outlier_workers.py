"""Outlier detection under --concurrency: followers' outcomes batched to the leader's one
detector per cluster, whose ejections every follower sets on its hosts."""

from __future__ import annotations

import random
from collections.abc import Callable

from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.outlier import OutlierConfig, OutlierDetector
from proxy.upstream.outlier_workers import (
    LOCAL_ORIGIN,
    SUCCESS_FLUSH,
    EjectionReport,
    FollowerOutlierDetectors,
    LeaderOutlierDetectors,
    OutcomeBatch,
    OutcomeRun,
)
from proxy.worker_link import (
    EJECTIONS,
    OUTCOMES,
    FrameReader,
    decode_ejections,
    decode_outcomes,
    encode_ejections,
    encode_outcomes,
)

CONFIG = OutlierConfig(consecutive_5xx=5, max_ejection_percent=100)


def hosts(*ports: int) -> list[Host]:
    return [Host("10.0.0.1", port) for port in ports]


class Timers:
    """The event loop's part: callbacks due at the end of this turn, and later ones."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []
        self.later: list[tuple[float, Callable[[], None]]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.later.append((delay, callback))

    def end_of_turn(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()

    def elapse(self) -> None:
        later, self.later = self.later, []
        for _, callback in later:
            callback()


def batch() -> tuple[OutcomeBatch, Timers, list[list[OutcomeRun]]]:
    timers, sent = Timers(), list[list[OutcomeRun]]()
    return OutcomeBatch(sent.append, timers.call_soon, timers.call_later), timers, sent


def test_successes_wait_and_travel_as_one_run() -> None:
    outcomes, timers, sent = batch()
    host = hosts(1)[0]
    for status in (200, 204, 404):
        outcomes.add("web", host, status)
    timers.end_of_turn()
    assert sent == []   # no write per request while the upstreams are well
    assert [delay for delay, _ in timers.later] == [SUCCESS_FLUSH]   # one timer, not one per success
    timers.elapse()
    assert sent == [[OutcomeRun("web", "10.0.0.1", 1, 200, 3)]]


def test_an_error_travels_at_the_end_of_the_turn_with_the_successes_before_it() -> None:
    outcomes, timers, sent = batch()
    a, b = hosts(1, 2)
    outcomes.add("web", a, 200)
    outcomes.add("web", b, 503)
    outcomes.add("web", b, None)
    outcomes.add("web", b, None)
    timers.end_of_turn()
    assert sent == [[OutcomeRun("web", "10.0.0.1", 1, 200, 1), OutcomeRun("web", "10.0.0.1", 2, 503, 1),
                     OutcomeRun("web", "10.0.0.1", 2, LOCAL_ORIGIN, 2)]]
    timers.elapse()   # the success timer finds nothing left
    assert len(sent) == 1


def test_outcome_runs_and_ejection_reports_cross_the_link_whole() -> None:
    runs = [OutcomeRun("web", "10.0.0.1", 1, 200, 7), OutcomeRun("web", "::1", 2, LOCAL_ORIGIN, 1)]
    report = EjectionReport("web", (("10.0.0.1", 1),))
    frames = list(FrameReader().feed(encode_outcomes(runs) + encode_ejections(report)))
    assert frames[0][0] == OUTCOMES and decode_outcomes(frames[0][1]) == runs
    assert frames[1][0] == EJECTIONS and decode_ejections(frames[1][1]) == report


class Leader:
    def __init__(self, members: list[Host]) -> None:
        self.reports: list[EjectionReport] = []
        self.detectors = LeaderOutlierDetectors(self.reports.append)
        self.host_set = HostSet(members, panic_threshold_percent=0)
        self.detector = self.detectors.detector(CONFIG, self.host_set, random.Random(0), "web", lambda: None)


def test_a_followers_failures_and_the_leaders_own_make_one_streak() -> None:
    leader = Leader(hosts(1, 2))
    host = leader.host_set.hosts[0]
    leader.detector.record(host, 503, 0.0)
    leader.detector.record(host, 503, 0.0)
    leader.detectors.apply([OutcomeRun("web", "10.0.0.1", 1, 503, 2)], now=0.1)
    assert not host.outlier_ejected
    leader.detectors.apply([OutcomeRun("web", "10.0.0.1", 1, LOCAL_ORIGIN, 1)], now=0.2)
    assert host.outlier_ejected
    assert leader.detector.stats.ejections_enforced_total == 1
    assert leader.reports[-1] == EjectionReport("web", (("10.0.0.1", 1),))


def test_a_followers_success_ends_the_leaders_streak() -> None:
    leader = Leader(hosts(1, 2))
    host = leader.host_set.hosts[0]
    for _ in range(4):
        leader.detector.record(host, 500, 0.0)
    leader.detectors.apply([OutcomeRun("web", "10.0.0.1", 1, 200, 3)], now=0.1)
    leader.detector.record(host, 500, 0.2)
    assert not host.outlier_ejected


def test_a_run_of_successes_counts_as_that_many_requests() -> None:
    one, many = (OutlierDetector(CONFIG, HostSet(hosts(1)), random.Random(0)) for _ in range(2))
    for _ in range(30):
        one.record(one._host_set.hosts[0], 200, 0.0)
    many.record_run(many._host_set.hosts[0], 200, 30, 0.0)
    one.tick(10.0)
    many.tick(10.0)
    assert list(one._monitors.values()) == list(many._monitors.values())


def test_the_leader_reports_each_return_and_a_new_detector_starts_empty() -> None:
    leader = Leader(hosts(1, 2))
    assert leader.reports == [EjectionReport("web", ())]   # a new detector: nothing ejected
    host = leader.host_set.hosts[0]
    for _ in range(5):
        leader.detector.record(host, 503, 0.0)
    leader.detector.tick(CONFIG.base_ejection_time + 1)
    assert leader.reports[-1] == EjectionReport("web", ())


def test_an_ejected_host_that_leaves_the_cluster_is_no_longer_reported_ejected() -> None:
    leader = Leader(hosts(1, 2))
    for _ in range(5):
        leader.detector.record(leader.host_set.hosts[0], 503, 0.0)
    leader.host_set.update(hosts(2))   # EDS dropped it: should it come back, it comes back new
    assert leader.reports[-1] == EjectionReport("web", ())


def test_only_the_current_detector_of_a_name_reports() -> None:
    leader = Leader(hosts(1, 2))
    old = leader.detector
    new = leader.detectors.detector(CONFIG, HostSet(hosts(1, 2)), random.Random(0), "web", lambda: None)
    leader.reports.clear()
    for _ in range(5):
        old.record(leader.host_set.hosts[0], 503, 0.0)
    leader.detectors.stopped("web", old)   # replaced: its successor serves the name
    assert leader.reports == []
    leader.detectors.stopped("web", new)
    assert leader.reports == [EjectionReport("web", (), removed=True)]


class Follower:
    def __init__(self, detectors: FollowerOutlierDetectors, members: list[Host]) -> None:
        self.host_set = HostSet(members, panic_threshold_percent=0)
        self.rebuilds = 0
        self.changes = 0
        self.host_set.subscribe(self._rebuilt)
        self.detector = detectors.detector(CONFIG, self.host_set, random.Random(0), "web", self._changed)
        self.rebuilds = 0

    def _rebuilt(self) -> None:
        self.rebuilds += 1

    def _changed(self) -> None:
        self.changes += 1

    def ejected(self) -> list[bool]:
        return [host.outlier_ejected for host in self.host_set.hosts]


def follower_detectors() -> tuple[FollowerOutlierDetectors, Timers, list[list[OutcomeRun]]]:
    outcomes, timers, sent = batch()
    return FollowerOutlierDetectors(outcomes), timers, sent


def test_a_follower_never_ejects_on_its_own_but_tells_the_leader() -> None:
    detectors, timers, sent = follower_detectors()
    follower = Follower(detectors, hosts(1, 2))
    for _ in range(20):
        follower.detector.record(follower.host_set.hosts[0], 503, 0.0)
    follower.detector.tick(100.0)
    assert follower.ejected() == [False, False]
    timers.end_of_turn()
    assert sent == [[OutcomeRun("web", "10.0.0.1", 1, 503, 20)]]
    assert follower.detector.stats.as_dict()["outlier_detection.ejections_detected_consecutive_5xx"] == 0


def test_the_leaders_ejections_are_set_in_one_step() -> None:
    detectors, _, _ = follower_detectors()
    follower = Follower(detectors, hosts(1, 2, 3))
    detectors.apply(EjectionReport("web", (("10.0.0.1", 1), ("10.0.0.1", 3))))
    assert follower.ejected() == [True, False, True]
    assert (follower.rebuilds, follower.changes) == (1, 1)
    assert follower.host_set.healthy == (follower.host_set.hosts[1],)
    detectors.apply(EjectionReport("web", (("10.0.0.1", 3),)))   # 1 is back
    assert follower.ejected() == [False, False, True]
    assert follower.detector.stats.ejections_active == 0   # the leader's gauge counts them


def test_a_host_a_follower_gets_later_takes_the_leaders_ejection() -> None:
    detectors, _, _ = follower_detectors()
    detectors.apply(EjectionReport("web", (("10.0.0.1", 2),)))   # before the follower has the cluster
    follower = Follower(detectors, hosts(1))
    follower.host_set.update(hosts(1, 2))
    assert follower.ejected() == [False, True]
    assert follower.host_set.healthy == (follower.host_set.hosts[0],)


def test_a_removed_clusters_ejections_are_forgotten() -> None:
    detectors, _, _ = follower_detectors()
    detectors.apply(EjectionReport("web", (("10.0.0.1", 1),)))
    detectors.apply(EjectionReport("web", (), removed=True))
    assert Follower(detectors, hosts(1)).ejected() == [False]
