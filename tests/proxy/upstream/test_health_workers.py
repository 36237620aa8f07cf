"""Health checking under --concurrency: the leader's reports and a follower's replica of them."""

from __future__ import annotations

import random

from proxy.upstream.health import HealthCheckConfig, HttpCheck
from proxy.upstream.health.replica import HealthReplica, ReplicatedHealthChecker
from proxy.upstream.health.report import ClusterHealth, HealthReporter, HostHealth
from proxy.upstream.health.workers import LeaderHealthChecks
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.worker_link import HEALTH, FrameReader, decode_health, encode_health
from tests.proxy.upstream.test_health_prober import HTTP, HttpUpstream, run, until

CONFIG = HealthCheckConfig(timeout=1.0, interval=5.0, unhealthy_threshold=2, healthy_threshold=1,
                           check=HttpCheck(path="/healthz"))


def hosts(*ports: int) -> list[Host]:
    return [Host("10.0.0.1", port) for port in ports]


class Follower:
    """One follower cluster "web": its HostSet, replicated checker and what it was told."""

    def __init__(self, replica: HealthReplica, members: list[Host]) -> None:
        self.host_set = HostSet(members)
        self.rebuilds = 0
        self.changes = 0
        self.host_set.subscribe(self._rebuilt)
        self.checker = replica.checker(CONFIG, self.host_set, "web", on_change=self._changed, clock=lambda: 42.0)
        self.checker.start()
        self.rebuilds = 0

    def _rebuilt(self) -> None:
        self.rebuilds += 1

    def _changed(self) -> None:
        self.changes += 1

    def failed(self) -> list[bool]:
        return [host.health_check_failed for host in self.host_set.hosts]


def delta(*entries: HostHealth, initialized: bool = True) -> ClusterHealth:
    return ClusterHealth("web", entries, initialized=initialized)


def test_a_followers_hosts_start_failed_until_the_leader_says_otherwise() -> None:
    follower = Follower(HealthReplica(), hosts(1, 2))
    assert follower.failed() == [True, True]
    assert not follower.checker.initialized.is_set()


def test_a_report_is_applied_to_the_hosts_with_those_addresses_in_one_step() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1, 2, 3))
    replica.apply(ClusterHealth("web", (HostHealth("10.0.0.1", 1, False), HostHealth("10.0.0.1", 3, False)),
                                full=True, initialized=True), now=1.0)
    assert follower.failed() == [False, True, False]
    assert follower.rebuilds == 1   # the balancers rebuilt once, for both hosts
    assert follower.changes == 1
    assert [host.key for host in follower.host_set.healthy] == ["10.0.0.1:1", "10.0.0.1:3"]


def test_a_report_of_another_cluster_or_an_unknown_host_changes_nothing_here() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1))
    replica.apply(ClusterHealth("api", (HostHealth("10.0.0.1", 1, False),)), now=1.0)
    replica.apply(delta(HostHealth("10.0.0.1", 9, False)), now=1.0)
    assert follower.failed() == [True]
    assert follower.rebuilds == 0


def test_a_follower_cluster_warms_until_the_leaders_first_round_is_complete() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1, 2))
    replica.apply(delta(HostHealth("10.0.0.1", 1, False), initialized=False), now=1.0)
    assert not follower.checker.initialized.is_set()
    replica.apply(ClusterHealth("web", (HostHealth("10.0.0.1", 1, False), HostHealth("10.0.0.1", 2, True)),
                                full=True, initialized=True), now=1.0)
    assert follower.checker.initialized.is_set()


def test_a_cluster_that_arrives_after_its_report_takes_the_kept_health_and_is_warm() -> None:
    replica = HealthReplica()
    replica.apply(ClusterHealth("web", (HostHealth("10.0.0.1", 1, False), HostHealth("10.0.0.1", 2, True)),
                                full=True, initialized=True), now=1.0)
    follower = Follower(replica, hosts(1, 2))
    assert follower.failed() == [False, True]
    assert follower.checker.initialized.is_set()


def test_a_host_that_appears_later_takes_its_kept_health_at_once() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1))
    replica.apply(ClusterHealth("web", (HostHealth("10.0.0.1", 1, False),), full=True, initialized=True), now=1.0)
    replica.apply(delta(HostHealth("10.0.0.1", 2, False)), now=2.0)   # probed before this worker has it
    follower.host_set.update(hosts(1, 2))                               # the EDS update arrives
    assert follower.failed() == [False, False]
    assert [host.key for host in follower.host_set.healthy] == ["10.0.0.1:1", "10.0.0.1:2"]


def test_a_new_host_the_leader_said_nothing_of_is_failed_and_pending() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1))
    replica.apply(ClusterHealth("web", (HostHealth("10.0.0.1", 1, False),), full=True, initialized=True), now=1.0)
    follower.host_set.update(hosts(1, 2))
    assert follower.failed() == [False, True]


def test_a_whole_report_forgets_the_hosts_the_leader_dropped() -> None:
    replica = HealthReplica()
    replica.apply(delta(HostHealth("10.0.0.1", 1, False), HostHealth("10.0.0.1", 2, False)), now=1.0)
    replica.apply(ClusterHealth("web", (HostHealth("10.0.0.1", 1, False),), full=True, initialized=True), now=1.0)
    assert replica.kept["web"].failed == {("10.0.0.1", 1): False}


def test_a_removed_cluster_is_forgotten_and_its_hosts_here_keep_their_health() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1))
    replica.apply(ClusterHealth("web", (HostHealth("10.0.0.1", 1, False),), full=True, initialized=True), now=1.0)
    replica.apply(ClusterHealth("web", (), removed=True), now=2.0)
    assert "web" not in replica.kept
    assert follower.failed() == [False]


def test_a_host_turning_healthy_starts_its_slow_start_when_the_follower_learns_it() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1))
    replica.apply(delta(HostHealth("10.0.0.1", 1, False)), now=7.5)
    assert follower.host_set.hosts[0].last_hc_pass_time == 7.5
    replica.apply(delta(HostHealth("10.0.0.1", 1, False)), now=9.0)
    assert follower.host_set.hosts[0].last_hc_pass_time == 7.5   # no flip: unchanged


def test_a_replaced_clusters_checker_no_longer_gets_reports() -> None:
    replica = HealthReplica()
    old = Follower(replica, hosts(1))
    new = Follower(replica, hosts(1))
    run(old.checker.stop)   # the old cluster stops after its successor started
    replica.apply(delta(HostHealth("10.0.0.1", 1, False)), now=1.0)
    assert new.failed() == [False]
    assert old.failed() == [True]


def test_a_followers_checker_counts_no_health_check_stats() -> None:
    replica = HealthReplica()
    follower = Follower(replica, hosts(1))
    replica.apply(delta(HostHealth("10.0.0.1", 1, False)), now=1.0)
    assert set(follower.checker.stats.as_dict().values()) == {0}


# the leader's side


def reporter(members: list[Host]) -> tuple[HealthReporter, list[ClusterHealth]]:
    sent: list[ClusterHealth] = []
    return HealthReporter("web", HostSet(members), sent.append), sent


def test_the_leader_reports_a_host_whose_health_flipped_or_got_its_first_result() -> None:
    reporter_, sent = reporter(hosts(1))
    host = Host("10.0.0.1", 1)
    reporter_.checked(host, changed=True)
    reporter_.checked(host, changed=False)   # nothing new for a follower (a pass, say)
    assert sent == [ClusterHealth("web", (HostHealth("10.0.0.1", 1, False),))]


def test_the_leader_sends_the_whole_cluster_once_warm_and_on_each_membership_change_after() -> None:
    members = hosts(1, 2)
    members[1].health_check_failed = True
    reporter_, sent = reporter(members)
    reporter_.hosts_changed()   # warming: the followers may still serve a cluster of this name
    assert sent == []
    reporter_.complete()
    reporter_.hosts_changed()
    whole = ClusterHealth("web", (HostHealth("10.0.0.1", 1, False), HostHealth("10.0.0.1", 2, True)),
                          full=True, initialized=True)
    assert sent == [whole, whole]


def test_the_leader_reports_a_removed_cluster_but_not_a_replaced_one() -> None:
    sent: list[ClusterHealth] = []
    leader = LeaderHealthChecks(sent.append)

    async def replace_then_remove() -> None:
        [old] = leader.checkers([HTTP], HostSet([]), random.Random(0), "web", lambda: True, lambda: None, None)
        [new] = leader.checkers([HTTP], HostSet([]), random.Random(0), "web", lambda: True, lambda: None, None)
        await old.stop()
        assert sent == []
        await new.stop()

    run(replace_then_remove)
    assert sent == [ClusterHealth("web", (), removed=True)]


def test_a_health_report_crosses_the_link_unchanged() -> None:
    report = ClusterHealth("web", (HostHealth("10.0.0.1", 80, False), HostHealth("fd00::1", 8080, True)),
                           full=True, initialized=True)
    [(kind, payload)] = FrameReader().feed(encode_health(report))
    assert kind == HEALTH
    assert decode_health(payload) == report


def test_a_follower_sees_each_change_the_leaders_probes_find() -> None:
    """The leader's HealthChecker against a real server, its reports through the frame
    codec into a follower's replica: the follower's host follows the leader's, probed once."""

    async def scenario() -> None:
        upstream = await HttpUpstream().start()
        replica = HealthReplica()
        reader = FrameReader()

        def link(report: ClusterHealth) -> None:
            for _, payload in reader.feed(encode_health(report)):
                replica.apply(decode_health(payload), 0.0)

        leader_hosts = HostSet([Host("127.0.0.1", upstream.port)])
        [leader] = LeaderHealthChecks(link).checkers([HTTP], leader_hosts, random.Random(1), "web",
                                                     lambda: True, lambda: None, None)
        follower_hosts = HostSet([Host("127.0.0.1", upstream.port)])
        follower = replica.checker(HTTP, follower_hosts, "web")
        assert isinstance(follower, ReplicatedHealthChecker)
        follower.start()
        leader.start()
        await until(follower.initialized.is_set)
        assert follower_hosts.hosts[0].healthy
        upstream.status = 503   # an active failure: unhealthy at once
        await until(lambda: not leader_hosts.hosts[0].healthy)
        await until(lambda: not follower_hosts.hosts[0].healthy)
        upstream.status = 200
        await until(lambda: follower_hosts.hosts[0].healthy)
        probes = len(upstream.requests)
        await leader.stop()
        await follower.stop()
        await upstream.stop()
        assert probes == leader.stats.attempt   # every probe was the leader's

    run(scenario)


def test_with_several_checks_the_cluster_is_warm_once_every_checks_first_round_is() -> None:
    sent: list[ClusterHealth] = []
    reporter_ = HealthReporter("web", HostSet(hosts(1)), sent.append, checks=2)
    reporter_.complete()
    assert sent == []
    reporter_.complete()
    assert sent == [ClusterHealth("web", (HostHealth("10.0.0.1", 1, False),), full=True, initialized=True)]


def test_a_report_reaches_every_check_of_a_followers_cluster_and_flips_each_host_once() -> None:
    replica = HealthReplica()
    host_set = HostSet(hosts(1))
    changes: list[None] = []
    group: list[ReplicatedHealthChecker] = []
    for _ in range(2):
        group.append(replica.checker(CONFIG, host_set, "web", on_change=lambda: changes.append(None),
                                     clock=lambda: 42.0, group=group))
    for checker in group:
        checker.start()
    replica.apply(delta(HostHealth("10.0.0.1", 1, False)), 42.0)
    assert [host.health_check_failed for host in host_set.hosts] == [False]
    assert all(checker.initialized.is_set() for checker in group)
    assert len(changes) == 1
