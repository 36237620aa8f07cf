"""The push debouncer: coalesce bursts, bound staleness (fake clock)."""

from __future__ import annotations

import pytest

from control.xds.debounce import DebounceConfig, Debouncer


def test_nothing_pending_means_no_deadline() -> None:
    d = Debouncer(DebounceConfig(quiet=0.1, max_delay=1.0))
    assert d.deadline() is None
    assert d.fire(100.0) == 0


def test_fires_after_a_quiet_period() -> None:
    d = Debouncer(DebounceConfig(quiet=0.1, max_delay=1.0))
    d.change(10.0)
    assert d.fire(10.05) == 0
    assert d.deadline() == pytest.approx(10.1)
    assert d.fire(10.1) == 1
    assert d.deadline() is None


def test_a_burst_is_coalesced_into_one_push() -> None:
    d = Debouncer(DebounceConfig(quiet=0.1, max_delay=1.0))
    for i in range(5):
        d.change(10.0 + i * 0.05)
    assert d.fire(10.25) == 0
    assert d.fire(10.3) == 5


def test_a_steady_trickle_still_fires_at_max_delay() -> None:
    d = Debouncer(DebounceConfig(quiet=0.1, max_delay=1.0))
    t = 10.0
    while t < 10.95:
        d.change(t)
        assert d.fire(t) == 0
        t += 0.05
    d.change(t)
    assert d.deadline() == pytest.approx(11.0)
    assert d.fire(11.0) > 0


def test_a_change_after_firing_starts_a_new_burst() -> None:
    d = Debouncer(DebounceConfig(quiet=0.1, max_delay=1.0))
    d.change(1.0)
    d.fire(1.1)
    d.change(5.0)
    assert d.deadline() == pytest.approx(5.1)


def test_config_rejects_max_delay_below_quiet() -> None:
    with pytest.raises(ValueError, match=r"debounce\.max_delay"):
        DebounceConfig(quiet=1.0, max_delay=0.5)
