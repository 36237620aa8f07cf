import pytest
from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers

from proxy.config_error import ConfigError
from proxy.upstream.circuit_breaker import CircuitBreaker, CircuitBreakerThresholds, RetryBudget


def test_envoy_defaults() -> None:
    t = CircuitBreakerThresholds()
    assert (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries) == (1024, 1024, 1024, 3)


def test_requests_up_to_the_maximum_are_admitted() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(max_requests=2))
    assert breaker.try_start_request() and breaker.try_start_request()
    assert breaker.rq_open == 1


def test_request_over_the_maximum_overflows_as_active_overflow() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(max_requests=1))
    assert breaker.try_start_request()
    assert not breaker.try_start_request()
    assert breaker.stats()["upstream_rq_active_overflow"] == 1
    assert breaker.stats()["upstream_rq_pending_overflow"] == 0
    assert breaker.requests == 1


def test_finishing_a_request_frees_its_slot() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(max_requests=1))
    breaker.try_start_request()
    breaker.finish_request()
    assert breaker.rq_open == 0
    assert breaker.try_start_request()


def test_pending_requests_overflow() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(max_pending_requests=1))
    assert breaker.try_start_pending()
    assert not breaker.try_start_pending()
    assert breaker.rq_pending_open == 1
    assert breaker.stats()["upstream_rq_pending_overflow"] == 1


def test_connections_overflow() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(max_connections=2))
    assert breaker.try_open_connection() and breaker.try_open_connection()
    assert not breaker.try_open_connection()
    assert breaker.stats()["upstream_cx_overflow"] == 1
    breaker.close_connection()
    assert breaker.cx_open == 0


def test_default_retry_limit_is_three_concurrent_retries() -> None:
    breaker = CircuitBreaker()
    assert all(breaker.try_start_retry() for _ in range(3))
    assert not breaker.try_start_retry()
    assert breaker.stats()["upstream_rq_retry_overflow"] == 1
    assert breaker.rq_retry_open == 1
    breaker.finish_retry()
    assert breaker.try_start_retry()


def test_retry_budget_scales_with_active_requests() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(retry_budget=RetryBudget(20.0, 3)))
    for _ in range(50):
        breaker.try_start_request()
    assert breaker.max_retries == 10  # 20% of 50


def test_retry_budget_never_goes_below_min_concurrency() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(retry_budget=RetryBudget(20.0, 3)))
    breaker.try_start_request()
    assert breaker.max_retries == 3


def test_stats_use_envoy_names_and_track_remaining() -> None:
    breaker = CircuitBreaker(CircuitBreakerThresholds(max_requests=5, track_remaining=True))
    breaker.try_start_request()
    stats = breaker.stats()
    assert stats["circuit_breakers.default.rq_open"] == 0
    assert stats["circuit_breakers.default.remaining_rq"] == 4
    assert stats["circuit_breakers.default.remaining_retries"] == 3


def test_from_proto_reads_default_priority() -> None:
    message = CircuitBreakers()
    t = message.thresholds.add()
    t.max_requests.value = 1
    t.max_retries.value = 0
    high = message.thresholds.add()
    high.priority = 1
    high.max_requests.value = 99
    thresholds = CircuitBreakerThresholds.from_proto(message)
    assert thresholds.max_requests == 1 and thresholds.max_retries == 0
    assert thresholds.max_connections == 1024
    assert CircuitBreakerThresholds.from_proto(message, priority=1).max_requests == 99


def test_from_proto_reads_retry_budget_defaults() -> None:
    message = CircuitBreakers()
    message.thresholds.add().retry_budget.SetInParent()
    assert CircuitBreakerThresholds.from_proto(message).retry_budget == RetryBudget(20.0, 3)


def test_from_proto_rejects_unsupported_fields() -> None:
    message = CircuitBreakers()
    message.thresholds.add().max_connection_pools.value = 3
    with pytest.raises(ConfigError, match=r"circuit_breakers\.thresholds\[0\]\.max_connection_pools"):
        CircuitBreakerThresholds.from_proto(message)


def test_from_proto_rejects_per_host_thresholds() -> None:
    message = CircuitBreakers()
    message.per_host_thresholds.add().max_connections.value = 1
    with pytest.raises(ConfigError, match=r"circuit_breakers\.per_host_thresholds"):
        CircuitBreakerThresholds.from_proto(message)


def test_from_proto_rejects_duplicate_priority() -> None:
    message = CircuitBreakers()
    message.thresholds.add()
    message.thresholds.add()
    with pytest.raises(ConfigError, match=r"thresholds\[1\]\.priority"):
        CircuitBreakerThresholds.from_proto(message)
