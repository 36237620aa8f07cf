"""RING_HASH: Envoy's consistent hashing on a ring (ketama).

Rules (Envoy's RingHashLoadBalancer, hash_function XX_HASH):
- Ring size: scale = min(ceil(min_w * minimum_ring_size) / min_w, maximum_ring_size)
  where min_w is the smallest normalized weight, so the lightest host gets a whole
  number of entries and every other host proportionally more (defaults 1024 and
  8M entries).
- Walking the hosts in order with running sums `target += scale * w` and
  `current` (entries made so far), each host gets entries while current < target;
  entry i of a host is xxHash64 of "ADDRESS:PORT_i". The entries are sorted by hash.
- A key picks the first entry whose hash is >= the key, wrapping to the first
  entry; attempt n > 0 (a retry that wants another host) moves n entries on.
- Removing one of N equal hosts moves the keys that host owned (about 1/N) and a
  few others: each survivor now gets ceil(minimum_ring_size / (N-1)) entries
  instead of ceil(minimum_ring_size / N), and the new entries take some keys.

The request's key also picks the priority level (by load share), as in Envoy.
Only the rings are rebuilt on a host or health change; a pick is one binary search.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from dataclasses import dataclass

import xxhash
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError, reject_unsupported
from proxy.upstream.balancer.hashing import NormalizedWeights, level_weights, normalized_weights
from proxy.upstream.balancer.levelled import LevelledBalancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet

DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RingHashConfig:
    minimum_ring_size: int = DEFAULT_MIN_RING_SIZE
    maximum_ring_size: int = DEFAULT_MAX_RING_SIZE

    def __post_init__(self) -> None:
        if self.minimum_ring_size > self.maximum_ring_size:
            raise ConfigError(
                "minimum_ring_size",
                f"({self.minimum_ring_size}) is larger than maximum_ring_size ({self.maximum_ring_size})",
            )

    @classmethod
    def from_proto(
        cls, message: Cluster.RingHashLbConfig | None, path: str = "ring_hash_lb_config"
    ) -> RingHashConfig:
        if message is None:
            return cls()
        reject_unsupported(message, path, ("minimum_ring_size", "maximum_ring_size", "hash_function"))
        if message.hash_function != Cluster.RingHashLbConfig.XX_HASH:
            raise ConfigError(f"{path}.hash_function", "only XX_HASH is supported")
        minimum = message.minimum_ring_size.value if message.HasField("minimum_ring_size") else DEFAULT_MIN_RING_SIZE
        maximum = message.maximum_ring_size.value if message.HasField("maximum_ring_size") else DEFAULT_MAX_RING_SIZE
        if maximum > DEFAULT_MAX_RING_SIZE:
            raise ConfigError(f"{path}.maximum_ring_size", f"must be at most {DEFAULT_MAX_RING_SIZE}")
        try:
            return cls(minimum, maximum)
        except ConfigError as error:
            raise error.under(path) from None


def build_ring(hosts: tuple[Host, ...], config: RingHashConfig) -> tuple[list[int], list[Host]]:
    """The ring over `hosts` as two parallel lists sorted by hash: entry hashes and their hosts."""
    return build_ring_from_weights(normalized_weights(hosts), config)


def build_ring_from_weights(normalized: NormalizedWeights, config: RingHashConfig) -> tuple[list[int], list[Host]]:
    weights, min_weight, _ = normalized
    if not weights:
        return [], []
    scale = min(
        math.ceil(min_weight * config.minimum_ring_size) / min_weight,
        float(config.maximum_ring_size),
    )
    entries: list[tuple[int, int, Host]] = []
    hash64 = xxhash.xxh64_intdigest
    current = 0.0
    target = 0.0
    order = 0
    for host, weight in weights:
        prefix = f"{host.key}_"
        target += scale * weight
        i = 0
        while current < target:
            entries.append((hash64(f"{prefix}{i}".encode()), order, host))
            order += 1
            i += 1
            current += 1
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[0] for e in entries], [e[2] for e in entries]


class RingHashBalancer(LevelledBalancer):
    __slots__ = ("_config", "_getrandbits", "_rings", "_single")

    def __init__(self, host_set: HostSet, rng: random.Random, config: RingHashConfig | None = None) -> None:
        super().__init__(host_set)
        self._config = config or RingHashConfig()
        self._getrandbits = rng.getrandbits
        self._rings: list[tuple[list[int], list[Host]]] = []
        self._single: tuple[list[int], list[Host]] | None = None
        self.hosts_changed()

    @property
    def ring_size(self) -> int:
        return sum(len(hashes) for hashes, _ in self._rings)

    def hosts_changed(self) -> None:
        self._rings = [build_ring_from_weights(level_weights(level), self._config) for level in self._host_set.levels]
        self._single = self._rings[0] if len(self._rings) == 1 else None
        self._levels_changed()

    def choose(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        if hash_key is None:
            hash_key = self._getrandbits(64)
        ring = self._single
        if ring is None:
            if not self._rings:
                return None
            # The key picks the level too, so a key sticks to one level.
            ring = self._rings[self._pick_level(hash_key)]
        elif self._single_panic:
            self.lb_healthy_panic += 1
        hashes, owners = ring
        if not hashes:
            return None
        index = bisect_left(hashes, hash_key)
        if index == len(hashes):
            index = 0
        if attempt:
            index = (index + attempt) % len(hashes)
        return owners[index]
