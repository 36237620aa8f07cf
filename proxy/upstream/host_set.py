"""The hosts of one cluster, their healthy subset, and Envoy's panic mode.

Rules (Envoy's, for a single priority level):
- `healthy` is the hosts whose `Host.healthy` is true, in configuration order.
- Panic: Envoy scales a level's health by the overprovisioning factor 1.4 and caps
  it at 100 (`min(100, 140 * healthy // total)`). At 100 the level is never in
  panic. Below it, the level is in panic when the healthy percentage
  (`100 * healthy / total`, a real number) is below `panic_threshold_percent`;
  then requests are balanced over *all* hosts, healthy or not, because sending
  traffic to a few survivors would only overload them too.
- A threshold of 0 disables panic: with no healthy host there is no host to route to.
- An empty host set is never routable.

Theory of operation: host and health changes are rare and requests are many, so
every change recomputes `healthy`, `in_panic` and the `routable()` tuple once,
and then tells its subscribers (the balancers) to rebuild their own tables. The
per-request path only reads precomputed tuples.

Priorities: hosts at every `locality_priority` are treated as one level; priority
failover is not modelled here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.upstream.host import Host

# Envoy's default overprovisioning factor, in percent.
OVERPROVISIONING_FACTOR_PERCENT = 140


class HostSet:
    def __init__(self, hosts: Sequence[Host], panic_threshold_percent: float = 50.0) -> None:
        if not 0.0 <= panic_threshold_percent <= 100.0:
            raise ValueError(f"panic threshold must be within 0..100, got {panic_threshold_percent}")
        self.panic_threshold_percent = panic_threshold_percent
        # Set by an active health checker: hosts that join start failed, as in Envoy,
        # until their first check passes.
        self.active_health_checking = False
        self.hosts: tuple[Host, ...] = ()
        self.healthy: tuple[Host, ...] = ()
        self.in_panic = False
        self._routable: tuple[Host, ...] = ()
        self._subscribers: list[Callable[[], None]] = []
        self._by_key: dict[tuple[str, int], Host] = {}
        self.update(hosts)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every membership or health change (balancers rebuild here)."""
        self._subscribers.append(callback)

    def update(self, hosts: Sequence[Host]) -> None:
        """Replace the membership (EDS/DNS). A host whose (address, port) was already
        present keeps its object, hence its counters and health flags; its weight and
        priority are taken from the new description."""
        kept: list[Host] = []
        by_key: dict[tuple[str, int], Host] = {}
        for new in hosts:
            ident = (new.address, new.port)
            if ident in by_key:
                continue  # Envoy de-duplicates endpoints by address
            old = self._by_key.get(ident)
            if old is not None and old is not new:
                old.weight = new.weight
                old.locality_priority = new.locality_priority
                new = old
            elif old is None and self.active_health_checking:
                new.health_check_failed = True
            by_key[ident] = new
            kept.append(new)
        self._by_key = by_key
        self.hosts = tuple(kept)
        self.health_changed()

    def health_changed(self) -> None:
        """Recompute the healthy subset and panic state after hosts' flags changed."""
        self.healthy = tuple(h for h in self.hosts if h.healthy)
        self.in_panic = self._panic(len(self.healthy), len(self.hosts))
        self._routable = self.hosts if self.in_panic else self.healthy
        for callback in self._subscribers:
            callback()

    def routable(self) -> tuple[Host, ...]:
        """The hosts a balancer should choose from: the healthy ones, or all in panic."""
        return self._routable

    def _panic(self, healthy: int, total: int) -> bool:
        threshold = self.panic_threshold_percent
        if total == 0:
            return threshold > 0
        if OVERPROVISIONING_FACTOR_PERCENT * healthy // total >= 100:
            return False
        return 100.0 * healthy / total < threshold

    def __len__(self) -> int:
        return len(self.hosts)
