"""Circuit breakers under --concurrency: two workers' views of one shared segment (a bytearray
stands in for the MAP_SHARED mapping the workers inherit)."""

from __future__ import annotations

import pytest

from proxy.upstream.circuit_breaker import CircuitBreakerThresholds, RetryBudget
from proxy.upstream.shared_breaker import GENERATIONS, BreakerCounters, SharedCircuitBreaker

ONE = CircuitBreakerThresholds(max_connections=1, max_pending_requests=1, max_requests=1, max_retries=1,
                               track_remaining=True)


def workers(count: int = 2) -> list[BreakerCounters]:
    memory = bytearray(BreakerCounters.size(count))
    return [BreakerCounters(memory, count, worker) for worker in range(count)]


def one_cluster(thresholds: CircuitBreakerThresholds = ONE, count: int = 2) -> list[SharedCircuitBreaker]:
    """The first cluster generation's breaker in each worker."""
    return [counters.breaker(thresholds) for counters in workers(count)]


def test_a_request_in_flight_in_one_worker_counts_against_every_worker() -> None:
    leader, follower = one_cluster()
    assert leader.try_start_request()
    assert not follower.try_start_request()
    assert (leader.rq_active_overflow, follower.rq_active_overflow) == (0, 1)   # counted where refused
    leader.finish_request()
    assert follower.try_start_request()


def test_connections_and_pending_requests_hold_across_workers() -> None:
    a, b, c = one_cluster(count=3)
    assert a.try_open_connection() and not b.try_open_connection() and not c.try_open_connection()
    assert (b.cx_overflow, c.cx_overflow) == (1, 1)
    assert c.try_start_pending() and not a.try_start_pending()
    a.close_connection()
    c.finish_pending()
    assert b.try_open_connection() and a.try_start_pending()


def test_a_retry_budget_is_a_share_of_every_workers_requests() -> None:
    budget = CircuitBreakerThresholds(max_requests=100, retry_budget=RetryBudget(budget_percent=50.0,
                                                                                  min_retry_concurrency=1))
    leader, follower = one_cluster(budget)
    for _ in range(4):
        assert leader.try_start_request()
    # 50% of the 4 requests in flight (all in the leader): 2 retries, wherever they start
    assert follower.try_start_retry() and leader.try_start_retry()
    assert not follower.try_start_retry()


def test_every_worker_reports_the_proxys_gauges() -> None:
    leader, follower = one_cluster()
    assert leader.try_start_request()
    follower.open_pool()
    for breaker in (leader, follower):
        stats = breaker.stats()
        assert stats["circuit_breakers.default.rq_open"] == 1
        assert stats["circuit_breakers.default.remaining_rq"] == 0
        assert stats["circuit_breakers.default.remaining_cx"] == 1
        assert stats["circuit_breakers.default.remaining_cx_pools"] == (1 << 64) - 2


def test_each_cluster_generation_has_its_own_counts_starting_at_zero() -> None:
    leader_counters, follower_counters = workers()
    old = [leader_counters.breaker(ONE), follower_counters.breaker(ONE)]
    new = [leader_counters.breaker(ONE), follower_counters.breaker(ONE)]   # CDS replaced the cluster
    assert old[0].try_start_request()    # in flight on the old cluster...
    assert new[1].try_start_request()    # ...does not count against the new one
    assert not new[0].try_start_request()
    old[0].finish_request()


def test_a_generation_reused_after_a_full_round_starts_from_zero_in_each_worker() -> None:
    leader_counters, follower_counters = workers()
    first = leader_counters.breaker(ONE)
    assert first.try_start_request()
    for _ in range(GENERATIONS - 1):
        leader_counters.breaker(ONE)
        follower_counters.breaker(ONE)
    follower_counters.breaker(ONE)
    again = [leader_counters.breaker(ONE), follower_counters.breaker(ONE)]   # the first's cells, reused
    assert again[1].try_start_request()


def test_a_segment_too_small_for_the_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="3 workers"):
        BreakerCounters(bytearray(BreakerCounters.size(2)), 3, 0)
