"""A first attempt's one timer (proxy/http/route_plan.py `first_deadline`): the nearest of the
request's own deadline, the connection manager's stream duration, the per-try timeouts and
the stream idle timeout, from the request's start; and its kind, which decides the reply."""

from __future__ import annotations

import pytest

from proxy.http.attempt import GLOBAL_TIMEOUT, IDLE_TIMEOUT
from proxy.http.retry import PER_TRY_IDLE_TIMEOUT, PER_TRY_TIMEOUT
from proxy.http.route_plan import first_deadline
from proxy.http.stream_duration import DURATION_TIMEOUT


def test_without_any_timeout_there_is_no_deadline() -> None:
    assert first_deadline(0.0, 0.0, 0.0)[0] == 0.0


@pytest.mark.parametrize(("timeouts", "nearest"), [
    ({"timeout": 15.0, "idle": 300.0}, (15.0, GLOBAL_TIMEOUT)),
    ({"timeout": 15.0, "idle": 300.0, "stream_duration": 2.0}, (2.0, DURATION_TIMEOUT)),
    ({"timeout": 15.0, "idle": 300.0, "stream_duration": 2.0, "per_try": 1.0}, (1.0, PER_TRY_TIMEOUT)),
    ({"timeout": 15.0, "idle": 300.0, "per_try": 1.0, "per_try_idle": 0.5}, (0.5, PER_TRY_IDLE_TIMEOUT)),
    ({"timeout": 15.0, "idle": 0.2, "per_try": 1.0, "per_try_idle": 0.5}, (0.2, IDLE_TIMEOUT)),
    ({"timeout": 0.0, "idle": 0.0, "stream_duration": 3.0}, (3.0, DURATION_TIMEOUT)),
])
def test_the_nearest_deadline_wins_with_its_kind(timeouts: dict[str, float], nearest: tuple[float, str]) -> None:
    assert first_deadline(timeouts["timeout"], timeouts.get("per_try", 0.0), timeouts["idle"],
                          per_try_idle=timeouts.get("per_try_idle", 0.0),
                          stream_duration=timeouts.get("stream_duration", 0.0)) == nearest
