"""MAGLEV: Envoy's Maglev consistent hashing (Eisenbud et al., NSDI 2016).

Rules (Envoy's MaglevLoadBalancer):
- A lookup table of `table_size` slots (a prime, default 65537) maps key % size
  to a host.
- Hosts are taken in the order of their "address:port" strings; each gets
  offset = xxHash64(key, seed 0) % size and skip = xxHash64(key, seed 1) % (size - 1) + 1,
  and its preference list is offset, offset + skip, offset + 2 skip, ... (mod size).
- The table is filled in rounds: in round r a host takes its next free preferred
  slot if r * w >= its target (its target grows by the largest normalized weight
  each time it takes a slot), so hosts fill slots in proportion to their weights.
  Rounds repeat until every slot is taken.
- Attempt n > 0 (a retry that wants another host) looks up key XOR (2^64 - n).
- Removing one of N hosts remaps little more than that host's 1/N of the slots.

Building the table is the costly part (~table_size * ln(table_size) probes), so
the last few tables are cached by host list: a host flapping between healthy and
ejected does not rebuild each time.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

import xxhash
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.balancer.hashing import (
    MASK64,
    NormalizedWeights,
    level_weights,
    normalized_weights,
)
from proxy.upstream.balancer.levelled import LevelledBalancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet, PriorityLevel

DEFAULT_TABLE_SIZE = 65537
_CACHED_TABLES = 4


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


@dataclass(frozen=True, slots=True)
class MaglevConfig:
    table_size: int = DEFAULT_TABLE_SIZE

    def __post_init__(self) -> None:
        if not is_prime(self.table_size):
            raise ConfigError("table_size", f"must be a prime number, got {self.table_size}")

    @classmethod
    def from_proto(cls, message: Cluster.MaglevLbConfig | None, path: str = "maglev_lb_config") -> MaglevConfig:
        if message is None:
            return cls()
        reject_unsupported(message, path, ("table_size",))
        if not message.HasField("table_size"):
            return cls()
        try:
            return cls(message.table_size.value)
        except ConfigError as error:
            raise error.under(path) from None


def build_table(hosts: tuple[Host, ...], table_size: int) -> list[Host]:
    """The Maglev lookup table over `hosts`: `table_size` slots, each holding a host."""
    return build_table_from_weights(normalized_weights(hosts), table_size)


def build_table_from_weights(normalized: NormalizedWeights, table_size: int) -> list[Host]:
    weights, _, max_weight = normalized
    if not weights:
        return []
    hash64 = xxhash.xxh64_intdigest
    # Envoy orders the hosts by their key string. Parallel lists, one slot per host:
    # next preferred position, skip, normalized weight, and target weight.
    ordered = sorted(weights, key=lambda hw: hw[0].key)
    members = [host for host, _ in ordered]
    shares = [weight for _, weight in ordered]
    positions = [hash64(h.key.encode(), 0) % table_size for h in members]
    skips = [hash64(h.key.encode(), 1) % (table_size - 1) + 1 for h in members]
    targets = [0.0] * len(members)
    table: list[Host | None] = [None] * table_size
    filled = 0
    iteration = 1
    while filled < table_size:
        for i, host in enumerate(members):
            if filled >= table_size:
                break
            if iteration * shares[i] < targets[i]:
                continue
            targets[i] += max_weight
            position, skip = positions[i], skips[i]
            while table[position] is not None:
                position = (position + skip) % table_size
            table[position] = host
            positions[i] = (position + skip) % table_size
            filled += 1
        iteration += 1
    return [host for host in table if host is not None]


class MaglevBalancer(LevelledBalancer):
    __slots__ = ("_cache", "_config", "_getrandbits", "_single", "_table_size", "_tables")

    def __init__(self, host_set: HostSet, rng: random.Random, config: MaglevConfig | None = None) -> None:
        super().__init__(host_set)
        self._config = config or MaglevConfig()
        self._table_size = self._config.table_size
        self._getrandbits = rng.getrandbits
        self._cache: OrderedDict[tuple[tuple[int, float], ...], list[Host]] = OrderedDict()
        self._tables: list[list[Host]] = []
        self._single: list[Host] | None = None
        self.hosts_changed()

    def _table_for(self, level: PriorityLevel) -> list[Host]:
        normalized = level_weights(level)
        # Keyed by identity and normalized weight: a replaced host object or a changed
        # (host or locality) weight gets a new table.
        signature = tuple((id(h), w) for h, w in normalized[0])
        table = self._cache.get(signature)
        if table is None:
            table = build_table_from_weights(normalized, self._table_size)
            self._cache[signature] = table
            if len(self._cache) > _CACHED_TABLES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(signature)
        return table

    def hosts_changed(self) -> None:
        self._tables = [self._table_for(level) for level in self._host_set.levels]
        self._single = self._tables[0] if len(self._tables) == 1 else None
        self._levels_changed()

    def choose(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        if hash_key is None:
            hash_key = self._getrandbits(64)
        table = self._single
        if table is None:
            if not self._tables:
                return None
            # The key picks the level too, so a key sticks to one level.
            table = self._tables[self._pick_level(hash_key)]
        elif self._single_panic:
            self.lb_healthy_panic += 1
        if not table:
            return None
        if attempt:
            hash_key ^= (MASK64 - attempt + 1) & MASK64
        return table[hash_key % self._table_size]
