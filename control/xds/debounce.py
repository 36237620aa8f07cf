"""Debouncing of config changes before a push: coalesce bursts, bound staleness.

Rules (istiod's PILOT_DEBOUNCE_AFTER / PILOT_DEBOUNCE_MAX, in the same roles):
- A change arms the debouncer. It fires once `quiet` seconds pass with no further change,
  so a burst of changes (an `apply -f` of fifty objects) becomes one push.
- It fires at the latest `max_delay` seconds after the first change of the burst, so a
  steady trickle of changes cannot starve proxies: staleness is bounded.
- Firing disarms it; the next change starts a new burst.

Sans-IO: the caller passes the time and asks `deadline()` when to wake up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DebounceConfig:
    quiet: float = 0.1
    max_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.quiet < 0:
            raise ValueError(f"debounce.quiet: must be >= 0, got {self.quiet}")
        if self.max_delay < self.quiet:
            raise ValueError(f"debounce.max_delay: must be >= quiet ({self.quiet}), got {self.max_delay}")


class Debouncer:
    __slots__ = ("_config", "_first", "_last", "events")

    def __init__(self, config: DebounceConfig | None = None) -> None:
        self._config = config or DebounceConfig()
        self._first: float | None = None
        self._last = 0.0
        self.events = 0  # changes coalesced into the pending push

    def change(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now
        self.events += 1

    @property
    def armed(self) -> bool:
        return self._first is not None

    def deadline(self) -> float | None:
        """When the pending push becomes due, or None when nothing is pending."""
        if self._first is None:
            return None
        return min(self._last + self._config.quiet, self._first + self._config.max_delay)

    def fire(self, now: float) -> int:
        """If the pending push is due at `now`, disarm and return how many changes it
        coalesces; otherwise return 0."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return 0
        events, self.events, self._first = self.events, 0, None
        return events
