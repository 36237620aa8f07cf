import random
from dataclasses import replace

from proxy.upstream.health import (
    FailureKind,
    HealthCheckConfig,
    HealthState,
    Transition,
    next_interval,
)
from proxy.upstream.health.config import TcpCheck
from proxy.upstream.health.state import initial_delay

CONFIG = HealthCheckConfig(timeout=1.0, interval=5.0, unhealthy_threshold=3, healthy_threshold=2, check=TcpCheck())


def test_new_host_starts_failed_and_pending() -> None:
    state = HealthState(2, 3)
    assert state.failed and state.pending


def test_first_success_makes_a_new_host_healthy_at_once() -> None:
    state = HealthState(healthy_threshold=5, unhealthy_threshold=3)
    assert state.on_success() is Transition.CHANGED
    assert not state.failed and not state.pending


def test_first_failure_keeps_the_host_failed_and_ends_pending() -> None:
    state = HealthState(2, 3)
    assert state.on_failure(FailureKind.NETWORK) is Transition.CHANGED
    assert state.failed and not state.pending


def test_network_failures_count_up_to_the_unhealthy_threshold() -> None:
    state = HealthState(2, 3)
    state.on_success()
    assert state.on_failure(FailureKind.NETWORK) is Transition.CHANGE_PENDING
    assert state.on_failure(FailureKind.NETWORK_TIMEOUT) is Transition.CHANGE_PENDING
    assert not state.failed
    assert state.on_failure(FailureKind.NETWORK) is Transition.CHANGED
    assert state.failed


def test_active_failure_fails_the_host_at_once() -> None:
    state = HealthState(2, 3)
    state.on_success()
    assert state.on_failure(FailureKind.ACTIVE) is Transition.CHANGED
    assert state.failed


def test_retriable_active_failure_counts_toward_the_threshold() -> None:
    state = HealthState(2, 2)
    state.on_success()
    assert state.on_failure(FailureKind.ACTIVE, retriable=True) is Transition.CHANGE_PENDING
    assert state.on_failure(FailureKind.ACTIVE, retriable=True) is Transition.CHANGED


def test_a_success_resets_the_failure_count() -> None:
    state = HealthState(2, 2)
    state.on_success()
    state.on_failure(FailureKind.NETWORK)
    assert state.on_success() is Transition.UNCHANGED
    assert state.on_failure(FailureKind.NETWORK) is Transition.CHANGE_PENDING
    assert not state.failed


def test_failed_host_needs_healthy_threshold_successes() -> None:
    state = HealthState(healthy_threshold=3, unhealthy_threshold=1)
    state.on_failure(FailureKind.NETWORK)  # first result: failed, settled
    assert state.on_success() is Transition.CHANGE_PENDING
    assert state.on_success() is Transition.CHANGE_PENDING
    assert state.on_success() is Transition.CHANGED
    assert not state.failed


def test_a_failure_resets_the_success_count() -> None:
    state = HealthState(healthy_threshold=2, unhealthy_threshold=1)
    state.on_failure(FailureKind.NETWORK)
    state.on_success()
    state.on_failure(FailureKind.NETWORK)
    assert state.on_success() is Transition.CHANGE_PENDING
    assert state.failed


def test_on_result_maps_to_success_or_counted_failure() -> None:
    state = HealthState(1, 2)
    state.on_result(True)
    assert state.on_result(False) is Transition.CHANGE_PENDING


def test_interval_with_traffic() -> None:
    rng = random.Random(0)
    config = replace(CONFIG, unhealthy_interval=7.0, unhealthy_edge_interval=1.5, healthy_edge_interval=0.5)
    assert next_interval(config, True, Transition.UNCHANGED, True, rng) == 5.0
    assert next_interval(config, True, Transition.CHANGE_PENDING, True, rng) == 0.5
    assert next_interval(config, False, Transition.UNCHANGED, True, rng) == 7.0
    assert next_interval(config, False, Transition.CHANGE_PENDING, True, rng) == 1.5


def test_edge_intervals_default_to_the_plain_ones() -> None:
    rng = random.Random(0)
    assert next_interval(CONFIG, True, Transition.CHANGE_PENDING, True, rng) == 5.0
    assert next_interval(CONFIG, False, Transition.CHANGE_PENDING, True, rng) == 5.0


def test_interval_without_traffic() -> None:
    rng = random.Random(0)
    config = replace(CONFIG, no_traffic_interval=30.0, no_traffic_healthy_interval=90.0)
    assert next_interval(config, True, Transition.UNCHANGED, False, rng) == 90.0
    assert next_interval(config, True, Transition.CHANGE_PENDING, False, rng) == 30.0
    assert next_interval(config, False, Transition.UNCHANGED, False, rng) == 30.0
    assert next_interval(CONFIG, True, Transition.UNCHANGED, False, rng) == 60.0


def test_jitter_adds_up_to_its_bounds() -> None:
    rng = random.Random(4)
    config = replace(CONFIG, interval_jitter=1.0, interval_jitter_percent=10)
    values = [next_interval(config, True, Transition.UNCHANGED, True, rng) for _ in range(500)]
    assert min(values) >= 5.0 and max(values) < 5.0 + 0.5 + 1.0
    assert max(values) > 6.0  # the jitter is really applied


def test_initial_delay_is_zero_without_initial_jitter() -> None:
    assert initial_delay(CONFIG, random.Random(0)) == 0.0
    delays = {initial_delay(replace(CONFIG, initial_jitter=2.0), random.Random(s)) for s in range(20)}
    assert all(0 < d < 2.0 for d in delays) and len(delays) > 10


def test_passive_failure_fails_the_host_at_once() -> None:
    state = HealthState(2, 3)
    state.on_success()
    assert state.on_failure(FailureKind.PASSIVE) is Transition.CHANGED
    assert state.failed
