import random
from dataclasses import replace

import pytest
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection

from proxy.config_error import ConfigError
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from proxy.upstream.outlier import OutlierConfig, OutlierDetector
from tests.proxy.upstream.hosts import make_hosts

# Every host may be ejected unless a test says otherwise.
LAX = OutlierConfig(max_ejection_percent=100)


def detector(n: int = 10, config: OutlierConfig = LAX) -> tuple[OutlierDetector, list[Host], HostSet]:
    hosts = make_hosts(n)
    host_set = HostSet(hosts, panic_threshold_percent=0)
    return OutlierDetector(config, host_set, random.Random(0)), hosts, host_set


def fail(d: OutlierDetector, host: Host, times: int, status: int | None = 500, now: float = 0.0) -> None:
    for _ in range(times):
        d.record(host, status, now)


def test_envoy_defaults() -> None:
    c = OutlierConfig()
    assert (c.interval, c.base_ejection_time, c.max_ejection_percent, c.consecutive_5xx) == (10.0, 30.0, 10, 5)
    assert (c.enforcing_consecutive_5xx, c.enforcing_consecutive_gateway_failure) == (100, 0)


def test_five_consecutive_5xx_eject_the_host() -> None:
    d, hosts, host_set = detector()
    fail(d, hosts[0], 5)
    assert hosts[0].outlier_ejected
    assert hosts[0] not in host_set.routable()
    stats = d.stats.as_dict()
    assert stats["outlier_detection.ejections_active"] == 1
    assert stats["outlier_detection.ejections_enforced_consecutive_5xx"] == 1
    assert stats["outlier_detection.ejections_detected_consecutive_5xx"] == 1


def test_a_success_resets_the_consecutive_count() -> None:
    d, hosts, _ = detector()
    fail(d, hosts[0], 4)
    d.record(hosts[0], 200, 0.0)
    fail(d, hosts[0], 4)
    assert not hosts[0].outlier_ejected


def test_4xx_is_a_success_for_outlier_detection() -> None:
    d, hosts, _ = detector()
    fail(d, hosts[0], 4)
    d.record(hosts[0], 404, 0.0)
    fail(d, hosts[0], 4)
    assert not hosts[0].outlier_ejected


def test_connect_failures_count_as_5xx() -> None:
    d, hosts, _ = detector()
    fail(d, hosts[0], 5, status=None)
    assert hosts[0].outlier_ejected


def test_gateway_failures_are_detected_but_not_enforced_by_default() -> None:
    d, hosts, _ = detector(config=replace(LAX, consecutive_5xx=100))
    fail(d, hosts[0], 5, status=503)
    assert not hosts[0].outlier_ejected
    stats = d.stats.as_dict()
    assert stats["outlier_detection.ejections_detected_consecutive_gateway_failure"] == 1
    assert stats["outlier_detection.ejections_enforced_total"] == 0


def test_enforced_gateway_failure_ejects() -> None:
    d, hosts, _ = detector(config=replace(LAX, consecutive_5xx=100, enforcing_consecutive_gateway_failure=100))
    fail(d, hosts[0], 5, status=502)
    assert hosts[0].outlier_ejected
    assert d.stats.as_dict()["outlier_detection.ejections_enforced_consecutive_gateway_failure"] == 1


def test_non_gateway_5xx_resets_the_gateway_count() -> None:
    d, hosts, _ = detector(config=replace(LAX, consecutive_5xx=100, enforcing_consecutive_gateway_failure=100))
    fail(d, hosts[0], 4, status=503)
    d.record(hosts[0], 500, 0.0)
    fail(d, hosts[0], 4, status=503)
    assert not hosts[0].outlier_ejected


def test_host_returns_after_base_ejection_time_on_a_tick() -> None:
    d, hosts, host_set = detector()
    fail(d, hosts[0], 5, now=0.0)
    d.tick(29.0)
    assert hosts[0].outlier_ejected
    d.tick(30.0)
    assert not hosts[0].outlier_ejected
    assert hosts[0] in host_set.routable()
    assert d.ejections_active == 0


def test_ejection_time_grows_with_each_ejection() -> None:
    d, hosts, _ = detector()
    fail(d, hosts[0], 5, now=0.0)
    d.tick(30.0)
    fail(d, hosts[0], 5, now=31.0)  # second ejection: 2 x 30 s
    d.tick(31.0 + 59.0)
    assert hosts[0].outlier_ejected
    d.tick(31.0 + 60.0)
    assert not hosts[0].outlier_ejected
    assert d.num_ejections(hosts[0]) == 2


def test_healthy_intervals_shrink_the_backoff_again() -> None:
    d, hosts, _ = detector()
    fail(d, hosts[0], 5, now=0.0)
    d.tick(30.0)  # back, backoff 1
    d.tick(40.0)  # a healthy interval since return: backoff 0
    fail(d, hosts[0], 5, now=41.0)  # backoff 1 again: 30 s
    d.tick(71.0)
    assert not hosts[0].outlier_ejected


def test_ejection_time_is_capped_by_max_ejection_time() -> None:
    d, hosts, _ = detector(config=replace(LAX, max_ejection_time=45.0))
    now = 0.0
    for _ in range(3):
        fail(d, hosts[0], 5, now=now)
        now += 100.0
        d.tick(now)
    fail(d, hosts[0], 5, now=now)
    d.tick(now + 45.0)
    assert not hosts[0].outlier_ejected


def test_max_ejection_percent_limits_ejections() -> None:
    d, hosts, _ = detector(10, OutlierConfig())  # 10% of 10 hosts: one
    fail(d, hosts[0], 5)
    fail(d, hosts[1], 5)
    assert hosts[0].outlier_ejected and not hosts[1].outlier_ejected
    assert d.stats.as_dict()["outlier_detection.ejections_overflow"] == 1


def test_small_cluster_cannot_eject_under_default_percent() -> None:
    # 1 of 3 hosts would be 33% > 10%: Envoy refuses unless always_eject_one_host.
    d, hosts, _ = detector(3, OutlierConfig())
    fail(d, hosts[0], 5)
    assert not hosts[0].outlier_ejected


def test_always_eject_one_host_allows_the_first_ejection() -> None:
    d, hosts, _ = detector(3, OutlierConfig(always_eject_one_host=True))
    fail(d, hosts[0], 5)
    fail(d, hosts[1], 5)
    assert hosts[0].outlier_ejected and not hosts[1].outlier_ejected


def test_zero_enforcement_never_ejects() -> None:
    d, hosts, _ = detector(config=replace(LAX, enforcing_consecutive_5xx=0))
    fail(d, hosts[0], 5)
    assert not hosts[0].outlier_ejected
    assert d.stats.as_dict()["outlier_detection.ejections_detected_consecutive_5xx"] == 1


def test_partial_enforcement_ejects_that_share_of_detections() -> None:
    ejected = 0
    for seed in range(400):
        hosts = make_hosts(2)
        d = OutlierDetector(replace(LAX, enforcing_consecutive_5xx=25), HostSet(hosts), random.Random(seed))
        fail(d, hosts[0], 5)
        ejected += hosts[0].outlier_ejected
    assert abs(ejected - 100) < 30


def test_success_rate_outlier_is_ejected_on_the_interval() -> None:
    d, hosts, _ = detector(6)
    for host in hosts:
        for i in range(100):
            bad = host is hosts[0] and i % 2 == 0  # 50% success vs 100%
            d.record(host, 500 if bad else 200, 1.0)
    d.tick(10.0)
    assert hosts[0].outlier_ejected
    assert d.stats.as_dict()["outlier_detection.ejections_enforced_success_rate"] == 1


def test_success_rate_needs_request_volume() -> None:
    d, hosts, _ = detector(6)
    for host in hosts:
        for i in range(99):
            d.record(host, 500 if host is hosts[0] and i % 2 else 200, 1.0)
    d.tick(10.0)
    assert not hosts[0].outlier_ejected


def test_failure_percentage_ejects_when_enforced() -> None:
    config = replace(
        LAX, enforcing_failure_percentage=100, enforcing_success_rate=0, consecutive_5xx=1000
    )
    d, hosts, _ = detector(5, config)
    for host in hosts:
        for i in range(50):
            d.record(host, 503 if host is hosts[0] and i % 10 else 200, 1.0)
    d.tick(10.0)
    assert hosts[0].outlier_ejected
    assert d.stats.as_dict()["outlier_detection.ejections_enforced_failure_percentage"] == 1


def test_successful_health_check_unejects_immediately() -> None:
    d, hosts, _ = detector()
    fail(d, hosts[0], 5)
    d.health_check_passed(hosts[0], 1.0)
    assert not hosts[0].outlier_ejected
    assert d.ejections_active == 0


def test_removed_ejected_host_leaves_the_active_count() -> None:
    d, hosts, host_set = detector()
    fail(d, hosts[0], 5)
    host_set.update(hosts[1:])
    assert d.ejections_active == 0


def test_on_change_is_called_on_ejection_and_return() -> None:
    d, hosts, _ = detector()
    calls: list[int] = []
    d.on_change = lambda: calls.append(1)
    fail(d, hosts[0], 5)
    d.tick(30.0)
    assert calls == [1, 1]


def test_from_proto_defaults_and_values() -> None:
    message = OutlierDetection()
    assert OutlierConfig.from_proto(message) == OutlierConfig()
    message.consecutive_5xx.value = 3
    message.interval.seconds = 1
    message.base_ejection_time.seconds = 400
    message.max_ejection_percent.value = 50
    config = OutlierConfig.from_proto(message)
    assert (config.consecutive_5xx, config.interval, config.max_ejection_percent) == (3, 1.0, 50)
    assert config.max_ejection_time == 400.0  # default max follows a larger base


def test_from_proto_rejects_max_below_base() -> None:
    message = OutlierDetection()
    message.base_ejection_time.seconds = 60
    message.max_ejection_time.seconds = 30
    with pytest.raises(ConfigError, match=r"outlier_detection\.max_ejection_time"):
        OutlierConfig.from_proto(message)


def test_from_proto_reads_the_local_origin_split() -> None:
    message = OutlierDetection(split_external_local_origin_errors=True)
    message.consecutive_local_origin_failure.value = 2
    config = OutlierConfig.from_proto(message)
    assert config.split_external_local_origin_errors and config.consecutive_local_origin_failure == 2


SPLIT = replace(LAX, split_external_local_origin_errors=True)


def test_split_connect_failures_eject_as_local_origin_failures() -> None:
    d, hosts, _ = detector(config=SPLIT)
    fail(d, hosts[0], 5, status=None)
    assert hosts[0].outlier_ejected
    stats = d.stats.as_dict()
    assert stats["outlier_detection.ejections_enforced_consecutive_local_origin_failure"] == 1
    assert stats["outlier_detection.ejections_detected_consecutive_5xx"] == 0


def test_split_connect_failures_are_not_5xx() -> None:
    d, hosts, _ = detector(config=replace(SPLIT, consecutive_local_origin_failure=100))
    fail(d, hosts[0], 4, status=500)
    fail(d, hosts[0], 3, status=None)
    fail(d, hosts[0], 1, status=500)  # the 5th consecutive 5xx
    assert hosts[0].outlier_ejected
    assert d.stats.as_dict()["outlier_detection.ejections_enforced_consecutive_5xx"] == 1


def test_split_any_response_resets_local_origin_failures() -> None:
    d, hosts, _ = detector(config=SPLIT)
    fail(d, hosts[0], 4, status=None)
    d.record(hosts[0], 503, 0.0)  # the connection worked
    fail(d, hosts[0], 4, status=None)
    assert not hosts[0].outlier_ejected


def test_split_local_origin_success_rate_outlier_is_ejected() -> None:
    d, hosts, _ = detector(6, SPLIT)
    for host in hosts:
        for i in range(100):
            d.record(host, None if host is hosts[0] and i % 2 else 200, 1.0)
    d.tick(10.0)
    assert hosts[0].outlier_ejected
    assert d.stats.as_dict()["outlier_detection.ejections_enforced_local_origin_success_rate"] == 1


def test_a_hosts_success_rate_is_minus_one_until_an_interval_had_enough_hosts_and_requests() -> None:
    d, hosts, _ = detector(n=4)   # fewer than the 5 hosts both detections need
    for host in hosts:
        fail(d, host, 100, status=200)
    d.tick(10.0)
    assert [d.success_rate(host) for host in hosts] == [-1.0] * 4


def test_a_hosts_success_rate_is_the_last_intervals_and_resets_every_interval() -> None:
    d, hosts, _ = detector(n=5, config=replace(LAX, enforcing_success_rate=0, enforcing_consecutive_5xx=0))
    for host in hosts[:4]:
        fail(d, host, 50, status=200)   # failure_percentage_request_volume (50) is enough to show it
    fail(d, hosts[4], 30, status=200)
    fail(d, hosts[4], 10, status=503)   # 40 requests: too few
    fail(d, hosts[0], 10, status=503)
    d.tick(10.0)
    assert [d.success_rate(host) for host in hosts] == [50 * 100.0 / 60, 100.0, 100.0, 100.0, -1.0]
    assert d.success_rate(hosts[0], local=True) == -1.0   # no split: no local-origin rate
    d.tick(20.0)
    assert [d.success_rate(host) for host in hosts] == [-1.0] * 5


def test_the_clusters_success_rate_average_and_threshold_are_the_last_intervals() -> None:
    d, hosts, _ = detector(n=5)
    assert (d.success_rate_average[False], d.success_rate_ejection_threshold[False]) == (-1.0, -1.0)
    for host in hosts:
        fail(d, host, 100, status=200)
    d.tick(10.0)
    assert (d.success_rate_average[False], d.success_rate_ejection_threshold[False]) == (100.0, 100.0)
    assert d.success_rate_average[True] == -1.0
    d.tick(20.0)
    assert d.success_rate_average[False] == -1.0
