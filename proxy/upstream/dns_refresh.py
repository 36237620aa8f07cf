"""When a DNS cluster asks DNS again: Envoy's refresh schedule, sans-IO.

Rules (Envoy 1.40's DNS cluster, source/extensions/clusters/dns/dns_cluster.cc, and its
back-off strategies):
- After an answer (a completed resolution, empty or not; for LOGICAL_DNS only a non-empty
  one), the next resolution is `dns_refresh_rate` later (default 5 s) — unless
  `respect_dns_ttl` is set and the answer has addresses whose smallest TTL is not 0: then
  that TTL. There is no floor: a TTL of 1 s means a query every second, and a TTL of 0
  ("do not cache") falls back to `dns_refresh_rate`, as does an empty answer. A record's TTL
  is already the smaller of its own and its CNAMEs' (the resolver's job).
- `dns_jitter` adds a uniformly random whole number of milliseconds in [0, jitter) to that
  interval (not to failures).
- After a failure (the resolver gave no answer: timeout, SERVFAIL, refused; for LOGICAL_DNS
  an empty answer too) the next resolution is the back-off's: without
  `dns_failure_refresh_rate`, a fixed `dns_refresh_rate`; with it, a jittered exponential
  back-off — the n-th failure in a row waits a random whole number of milliseconds in
  [0, ceiling): the ceiling starts at base and doubles while the double stays within max,
  then is max (max defaults to 10 * base): base 1 s, max 5 s gives 1, 2, 4, 5, 5 s.
- The back-off belongs to the cluster, not to one name: any answer resets it, as Envoy's
  one `failure_backoff_strategy_` per cluster is reset by any of its targets' success.

Theory of operation: the cluster's I/O shell (proxy/upstream/cluster.py) calls `answered`
or `failed` with the current time when a resolution of one of its names ends and sleeps
until the time returned. Randomness comes from the `random.Random` given, so a test with a
seeded one and a fake clock sees exact instants.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_REFRESH_RATE = 5.0


@dataclass(frozen=True, slots=True)
class DnsRefreshConfig:
    """A cluster's refresh fields, in seconds."""

    refresh_rate: float = DEFAULT_REFRESH_RATE   # dns_refresh_rate
    respect_ttl: bool = False                    # respect_dns_ttl
    jitter: float = 0.0                          # dns_jitter (0: none)
    failure_base: float | None = None            # dns_failure_refresh_rate.base_interval (None: unset)
    failure_max: float | None = None             # .max_interval (None: 10 * base)


class DnsRefreshSchedule:
    """One cluster's schedule: each call says when the name just resolved is resolved next."""

    def __init__(self, config: DnsRefreshConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._next_backoff_ms = 0   # the exponential back-off's current ceiling (0: reset)

    def answered(self, now: float, ttls: Sequence[float]) -> float:
        """An answer with these addresses' TTLs (empty: no addresses) came in at `now`: the
        time of the next resolution. Resets the failure back-off."""
        config = self.config
        self._next_backoff_ms = 0
        interval = config.refresh_rate
        if config.respect_ttl and ttls:
            ttl = min(ttls)
            if ttl > 0:
                interval = ttl
        jitter_ms = int(config.jitter * 1000)
        if jitter_ms > 0:
            interval += self._rng.randrange(jitter_ms) / 1000
        return now + interval

    def failed(self, now: float) -> float:
        """A resolution failed at `now`: the time of the next attempt."""
        config = self.config
        if config.failure_base is None:
            return now + config.refresh_rate
        base_ms = max(1, int(config.failure_base * 1000))
        max_ms = (int(config.failure_max * 1000) if config.failure_max is not None else base_ms * 10)
        ceiling = self._next_backoff_ms or base_ms
        self._next_backoff_ms = ceiling * 2 if ceiling < max_ms // 2 else max_ms
        return now + self._rng.randrange(ceiling) / 1000

    def reset(self) -> None:
        """Forget the failures so far (the cluster's first resolution, or a replacement)."""
        self._next_backoff_ms = 0
