"""When a DNS cluster asks again (Envoy's dns_cluster.cc), on a fake clock: the TTL under
respect_dns_ttl, else dns_refresh_rate; TTL 0 and empty answers fall back to the rate;
dns_jitter adds [0, jitter); failures back off (fixed, or jittered exponential with
dns_failure_refresh_rate) until an answer resets it."""

from __future__ import annotations

import random

from proxy.upstream.dns_refresh import DnsRefreshConfig, DnsRefreshSchedule


def schedule(**fields: object) -> DnsRefreshSchedule:
    return DnsRefreshSchedule(DnsRefreshConfig(**fields), random.Random(7))  # type: ignore[arg-type]


def test_without_respect_dns_ttl_an_answer_is_refreshed_after_dns_refresh_rate() -> None:
    assert schedule(refresh_rate=60.0).answered(100.0, [1.0]) == 160.0


def test_with_respect_dns_ttl_the_smallest_ttl_is_the_interval() -> None:
    assert schedule(refresh_rate=60.0, respect_ttl=True).answered(100.0, [30.0, 1.0, 7.0]) == 101.0


def test_a_ttl_longer_than_the_refresh_rate_is_taken_as_it_is() -> None:
    assert schedule(refresh_rate=5.0, respect_ttl=True).answered(0.0, [300.0]) == 300.0


def test_a_ttl_of_zero_falls_back_to_the_refresh_rate() -> None:
    assert schedule(refresh_rate=60.0, respect_ttl=True).answered(0.0, [0.0, 30.0]) == 60.0


def test_an_empty_answer_falls_back_to_the_refresh_rate() -> None:
    assert schedule(refresh_rate=60.0, respect_ttl=True).answered(0.0, []) == 60.0


def test_jitter_adds_whole_milliseconds_below_it() -> None:
    refresh = schedule(refresh_rate=10.0, respect_ttl=True, jitter=0.1)
    delays = [refresh.answered(0.0, [1.0]) - 1.0 for _ in range(200)]
    assert all(0.0 <= delay < 0.1 for delay in delays)
    assert all(abs(delay * 1000 - round(delay * 1000)) < 1e-6 for delay in delays)
    assert len(set(delays)) > 20


def test_without_dns_failure_refresh_rate_a_failure_waits_the_refresh_rate() -> None:
    refresh = schedule(refresh_rate=4.0)
    assert [refresh.failed(10.0) for _ in range(3)] == [14.0, 14.0, 14.0]


class Highest(random.Random):
    """Always the largest value a jitter may take: the back-off's ceiling, less 1 ms."""

    def randrange(self, stop: int) -> int:  # type: ignore[override]
        return stop - 1


def highest(**fields: object) -> DnsRefreshSchedule:
    return DnsRefreshSchedule(DnsRefreshConfig(**fields), Highest())  # type: ignore[arg-type]


def test_failures_back_off_below_a_ceiling_that_doubles_until_it_would_pass_max() -> None:
    refresh = highest(refresh_rate=60.0, failure_base=1.0, failure_max=5.0)
    assert [round(refresh.failed(0.0), 3) for _ in range(5)] == [0.999, 1.999, 3.999, 4.999, 4.999]


def test_max_interval_defaults_to_ten_times_the_base() -> None:
    refresh = highest(failure_base=1.0)
    assert [round(refresh.failed(0.0), 3) for _ in range(6)] == [0.999, 1.999, 3.999, 7.999, 9.999, 9.999]


def test_an_answer_resets_the_back_off() -> None:
    refresh = highest(failure_base=1.0, failure_max=60.0)
    for _ in range(5):
        refresh.failed(0.0)
    refresh.answered(0.0, [5.0])
    assert round(refresh.failed(0.0), 3) == 0.999


def test_a_failure_is_not_jittered_by_dns_jitter() -> None:
    assert highest(refresh_rate=4.0, jitter=1.0).failed(10.0) == 14.0


def test_a_seeded_schedule_is_deterministic() -> None:
    def run() -> list[float]:
        refresh = schedule(refresh_rate=5.0, respect_ttl=True, jitter=0.5, failure_base=0.2, failure_max=3.0)
        return [refresh.failed(0.0), refresh.failed(1.0), refresh.answered(2.0, [1.0]), refresh.failed(3.0)]

    assert run() == run()
