"""The hosts of one cluster by priority level, their health, Envoy's panic mode
and the share of requests each priority level gets.

Rules (Envoy's LoadBalancerBase, degraded hosts aside):
- Hosts are grouped into levels by `Host.locality_priority` (0 is the most
  preferred). `healthy` lists the hosts whose `Host.healthy` is true, in
  configuration order.
- A level's health is its healthy share scaled by the overprovisioning factor
  1.4 and capped: `min(100, 140 * healthy // total)`. So a level with at least
  ~72% healthy hosts still counts as fully available.
- Load: the levels' healths, capped together at 100 ("normalized availability"),
  divide the requests: level i gets `health_i * 100 // availability` percent,
  in priority order, until 100 is given out; a rounding remainder goes to the
  first level with any health. Traffic thus spills to lower priorities only as
  higher ones lose hosts (priority failover).
- Panic: when the normalized availability is 100, no level is in panic. Below
  it, a level is in panic when its healthy percentage (`100 * healthy / total`,
  a real number; 0 for an empty level) is below `panic_threshold_percent`
  (default 50); a level in panic balances over *all* its hosts, because sending
  everything to the few survivors would only overload them too. When every
  level is in panic, load follows the host counts instead of health.
- A threshold of 0 disables panic: with no healthy host anywhere, level 0 gets
  all the load and has nothing to route to.
- Locality-weighted balancing (`set_locality_weighted(True)`, from Cluster
  common_lb_config.locality_weighted_lb_config): each level also lists its
  localities (`LocalityGroup`: the hosts sharing `Host.locality`, with the
  LocalityLbEndpoints weight); balancers then pick a locality before a host.

Theory of operation: host and health changes are rare and requests are many, so
every change recomputes the levels, their routable tuples and the cumulative
load bounds once, then tells its subscribers (the balancers) to rebuild their
own tables. Per request, a balancer only calls `choose_level(random_or_hash)`
(a no-op with one level) and indexes precomputed tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.host import Host

# Envoy's default overprovisioning factor, in percent.
OVERPROVISIONING_FACTOR_PERCENT = 140


DEFAULT_PANIC_THRESHOLD_PERCENT = 50.0


def panic_threshold_from_proto(
    common_lb_config: Cluster.CommonLbConfig | None, path: str = "common_lb_config"
) -> float:
    """`Cluster.common_lb_config.healthy_panic_threshold` rounded to a whole percent, as
    Envoy does (default 50). The other CommonLbConfig fields are not supported."""
    if common_lb_config is None:
        return DEFAULT_PANIC_THRESHOLD_PERCENT
    reject_unsupported(common_lb_config, path, ("healthy_panic_threshold",))
    if not common_lb_config.HasField("healthy_panic_threshold"):
        return DEFAULT_PANIC_THRESHOLD_PERCENT
    value = common_lb_config.healthy_panic_threshold.value
    if not 0.0 <= value <= 100.0:
        raise ConfigError(f"{path}.healthy_panic_threshold.value", f"must be within 0..100, got {value}")
    return float(round(value))


@dataclass(slots=True)
class LocalityGroup:
    """The hosts of one locality within a priority level (locality-weighted balancing)."""

    locality: str
    weight: int  # the LocalityLbEndpoints' load_balancing_weight
    hosts: tuple[Host, ...]
    healthy: tuple[Host, ...]

    @property
    def effective_weight(self) -> float:
        """Envoy: weight x min(1, 1.4 x healthy share) — a locality losing hosts sheds load."""
        if not self.hosts:
            return 0.0
        availability = min(1.0, OVERPROVISIONING_FACTOR_PERCENT / 100.0 * len(self.healthy) / len(self.hosts))
        return self.weight * availability


@dataclass(slots=True)
class PriorityLevel:
    priority: int
    hosts: tuple[Host, ...]
    healthy: tuple[Host, ...]
    health: int = 0  # 0..100, overprovisioned
    in_panic: bool = False
    load: int = 0  # percent of requests sent to this level
    routable: tuple[Host, ...] = ()  # healthy, or all hosts in panic
    # With locality-weighted balancing: the level's localities, in order of first
    # appearance; empty otherwise.
    localities: tuple[LocalityGroup, ...] = ()


class HostSet:
    def __init__(
        self, hosts: Sequence[Host], panic_threshold_percent: float = DEFAULT_PANIC_THRESHOLD_PERCENT
    ) -> None:
        if not 0.0 <= panic_threshold_percent <= 100.0:
            raise ValueError(f"panic threshold must be within 0..100, got {panic_threshold_percent}")
        self.panic_threshold_percent = panic_threshold_percent
        # Cluster.common_lb_config.locality_weighted_lb_config: balancers first pick a
        # locality by weight, then a host within it (see LocalityGroup).
        self.locality_weighted = False
        # Set by an active health checker: hosts that join start failed, as in Envoy,
        # until their first check passes.
        self.active_health_checking = False
        self.hosts: tuple[Host, ...] = ()
        self.healthy: tuple[Host, ...] = ()
        self.levels: tuple[PriorityLevel, ...] = ()
        self.in_panic = False
        self._routable: tuple[Host, ...] = ()
        self._load_bounds: tuple[int, ...] = ()
        self._subscribers: list[Callable[[], None]] = []
        self._by_key: dict[tuple[str, int], Host] = {}
        self.update(hosts)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every membership or health change (balancers rebuild here)."""
        self._subscribers.append(callback)

    def host(self, address: str, port: int) -> Host | None:
        """The member at (address, port), if any (another worker names hosts so)."""
        return self._by_key.get((address, port))

    def update(self, hosts: Sequence[Host]) -> int:
        """Replace the membership (EDS/DNS). A host whose (address, port) was already
        present keeps its object, hence its counters and health-check and outlier
        flags; its weight, priority and EDS health are taken from the new description.
        Returns the number of priority levels that gained or lost a host (Envoy's
        membership_change counts those)."""
        before = {(host.address, host.port, host.locality_priority) for host in self.hosts}
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
                old.eds_health_failed = new.eds_health_failed
                old.health_check_port = new.health_check_port
                old.locality = new.locality
                old.locality_weight = new.locality_weight
                new = old
            elif old is None and self.active_health_checking:
                new.health_check_failed = True
            by_key[ident] = new
            kept.append(new)
        self._by_key = by_key
        self.hosts = tuple(kept)
        self.health_changed()
        after = {(host.address, host.port, host.locality_priority) for host in kept}
        return len({priority for _, _, priority in before ^ after})

    def health_changed(self) -> None:
        """Recompute health, panic and load after hosts' flags changed; notify subscribers."""
        self.healthy = tuple(h for h in self.hosts if h.healthy)
        self.levels = self._levels()
        self._load_bounds = self._cumulative_loads()
        self.in_panic = any(level.in_panic for level in self.levels) if self.levels else self.panic_threshold_percent > 0
        routable: list[Host] = []
        for level in self.levels:
            if level.load > 0:
                routable.extend(level.routable)
        self._routable = tuple(routable)
        for callback in self._subscribers:
            callback()

    def routable(self) -> tuple[Host, ...]:
        """Every host that can receive requests now: each loaded level's healthy hosts,
        or all of its hosts when it is in panic. With one level, exactly what a
        balancer chooses from."""
        return self._routable

    def choose_level(self, value: int) -> int:
        """The index into `levels` for a request, from a random number or its hash
        (Envoy: `value % 100 + 1` against the cumulative loads)."""
        bounds = self._load_bounds
        if len(bounds) <= 1:
            return 0
        point = value % 100 + 1
        for index, bound in enumerate(bounds):
            if point <= bound:
                return index
        return 0

    # -- rules ------------------------------------------------------------------

    def _levels(self) -> tuple[PriorityLevel, ...]:
        by_priority: dict[int, list[Host]] = {}
        for host in self.hosts:
            by_priority.setdefault(host.locality_priority, []).append(host)
        levels = []
        for priority in sorted(by_priority):
            members = tuple(by_priority[priority])
            healthy = tuple(h for h in members if h.healthy)
            health = min(100, OVERPROVISIONING_FACTOR_PERCENT * len(healthy) // len(members))
            levels.append(PriorityLevel(priority, members, healthy, health))
        availability = min(100, sum(level.health for level in levels))
        threshold = self.panic_threshold_percent
        if availability > 0:
            remaining = 100
            for level in levels:
                level.load = min(remaining, level.health * 100 // availability)
                remaining -= level.load
            if remaining:
                next(level for level in levels if level.health > 0).load += remaining
        for level in levels:
            level.in_panic = availability < 100 and 100.0 * len(level.healthy) / len(level.hosts) < threshold
        if levels and all(level.in_panic for level in levels):
            total = len(self.hosts)
            remaining = 100
            for level in levels:
                level.load = 100 * len(level.hosts) // total
                remaining -= level.load
            levels[0].load += remaining
        elif levels and availability == 0:  # panic disabled and nothing healthy
            for level in levels:
                level.load = 0
            levels[0].load = 100
        for level in levels:
            level.routable = level.hosts if level.in_panic else level.healthy
            if self.locality_weighted:
                level.localities = _localities(level.hosts)
        return tuple(levels)

    def set_locality_weighted(self, enabled: bool) -> None:
        """Switch locality-weighted balancing on or off (recomputes and notifies)."""
        self.locality_weighted = enabled
        self.health_changed()

    def _cumulative_loads(self) -> tuple[int, ...]:
        bounds = []
        total = 0
        for level in self.levels:
            total += level.load
            bounds.append(total)
        return tuple(bounds)

    def __len__(self) -> int:
        return len(self.hosts)


def _localities(hosts: tuple[Host, ...]) -> tuple[LocalityGroup, ...]:
    groups: dict[str, list[Host]] = {}
    for host in hosts:
        groups.setdefault(host.locality, []).append(host)
    return tuple(
        LocalityGroup(name, members[0].locality_weight, tuple(members), tuple(h for h in members if h.healthy))
        for name, members in groups.items()
    )
