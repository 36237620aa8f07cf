"""Retry decisions and back-off, Envoy's rules."""

from __future__ import annotations

import random

import pytest
from envoy.config.route.v3.route_components_pb2 import RetryPolicy as RetryPolicyProto
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.http.attempt import UPSTREAM_DURATION
from proxy.http.retry import (
    CONNECT_FAILURE,
    PER_TRY_IDLE_TIMEOUT,
    PER_TRY_TIMEOUT,
    RESET,
    RetryPolicy,
    RetryState,
    is_retriable,
)


def policy(**fields: object) -> RetryPolicy:
    message = RetryPolicyProto()
    json_format.ParseDict(fields, message)
    return RetryPolicy.from_proto(message, "retry_policy")


@pytest.mark.parametrize(("retry_on", "outcome", "retried"), [
    ("5xx", 500, True),
    ("5xx", 503, True),
    ("5xx", 404, False),
    ("5xx", CONNECT_FAILURE, True),
    ("5xx", RESET, True),
    ("5xx", PER_TRY_TIMEOUT, True),
    ("gateway-error", 502, True),
    ("gateway-error", 503, True),
    ("gateway-error", 504, True),
    ("gateway-error", 500, False),
    ("gateway-error", RESET, True),
    ("connect-failure", CONNECT_FAILURE, True),
    ("connect-failure", RESET, False),
    ("connect-failure", 503, False),
    ("reset", RESET, True),
    ("reset", PER_TRY_TIMEOUT, True),
    ("reset", 503, False),
    ("retriable-4xx", 409, True),
    ("retriable-4xx", 404, False),
    ("refused-stream", RESET, False),
    ("5xx", PER_TRY_IDLE_TIMEOUT, True),
    ("reset", PER_TRY_IDLE_TIMEOUT, True),
    ("connect-failure", PER_TRY_IDLE_TIMEOUT, False),
    ("5xx", UPSTREAM_DURATION, True),
    ("gateway-error", UPSTREAM_DURATION, True),
    ("reset", UPSTREAM_DURATION, True),
    ("connect-failure", UPSTREAM_DURATION, False),
    ("retriable-4xx", UPSTREAM_DURATION, False),
])
def test_retry_on_conditions(retry_on: str, outcome: int | str, retried: bool) -> None:
    assert is_retriable(policy(retryOn=retry_on), outcome) is retried


def test_retriable_status_codes_only_retry_listed_codes() -> None:
    chosen = policy(retryOn="retriable-status-codes", retriableStatusCodes=[418])
    assert is_retriable(chosen, 418)
    assert not is_retriable(chosen, 503)


def test_num_retries_bounds_the_retries() -> None:
    state = RetryState(policy(retryOn="5xx", numRetries=2))
    rng = random.Random(1)
    assert state.decide(503)
    state.backoff(rng)
    assert state.decide(503)
    state.backoff(rng)
    assert not state.decide(503)


def test_num_retries_defaults_to_one() -> None:
    assert policy(retryOn="5xx").num_retries == 1


def test_backoff_is_jittered_below_an_exponentially_growing_ceiling() -> None:
    state = RetryState(policy(retryOn="5xx", numRetries=10))
    rng = random.Random(7)
    ceilings = [0.025, 0.075, 0.175, 0.25, 0.25]   # (2^n - 1) * 25 ms, capped at 250 ms
    for ceiling in ceilings:
        delay = state.backoff(rng)
        assert 0 <= delay < ceiling + 1e-9


def test_backoff_follows_configured_base_and_max() -> None:
    chosen = policy(retryOn="5xx", retryBackOff={"baseInterval": "0.1s", "maxInterval": "0.1s"})
    assert (chosen.base_interval, chosen.max_interval) == (0.1, 0.1)
    state = RetryState(chosen)
    rng = random.Random(3)
    assert all(0 <= state.backoff(rng) <= 0.1 for _ in range(20))


def test_max_interval_defaults_to_ten_times_base() -> None:
    assert policy(retryOn="5xx", retryBackOff={"baseInterval": "0.05s"}).max_interval == 0.5


def test_unknown_retry_condition_is_rejected_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"retry_policy\.retry_on: unknown retry condition 'sometimes'"):
        policy(retryOn="5xx,sometimes")


def test_previous_hosts_predicate_is_understood() -> None:
    chosen = policy(retryOn="5xx", retryHostPredicate=[{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        hostSelectionRetryMaxAttempts=3)
    assert chosen.previous_hosts
    assert chosen.host_selection_retry_max_attempts == 3


def test_unsupported_retry_field_is_rejected_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"retry_policy\.retry_priority"):
        policy(retryOn="5xx", retryPriority={"name": "envoy.retry_priorities.previous_priorities"})


def test_per_try_idle_timeout_is_read_in_seconds() -> None:
    assert policy(retryOn="5xx", perTryIdleTimeout="0.25s").per_try_idle_timeout == 0.25
    assert policy(retryOn="5xx").per_try_idle_timeout == 0.0


def test_a_negative_per_try_idle_timeout_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"retry_policy\.per_try_idle_timeout: must not be negative"):
        policy(retryOn="5xx", perTryIdleTimeout="-1s")
