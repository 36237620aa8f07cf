"""What the consistent-hashing balancers (ring hash, Maglev) share.

Rules (Envoy's ThreadAwareLoadBalancerBase):
- The table is built over `HostSet.routable()`: the healthy hosts, or all hosts in panic.
- Host weights are normalized to sum to 1 (`weight * 1.0 / total`), computed in
  exactly Envoy's floating-point order so that the tables come out identical.
- A host is hashed by its "address:port" string (`Host.key`), as Envoy hashes
  `address()->asString()`; the same hosts give the same table on every proxy.
- A request without a hash key (no hash_policy, or none of its inputs present)
  gets a random 64-bit key: hashing degrades to random balancing, as in Envoy.
- Hash keys are 64-bit xxHash64 values (`hash_key_for`); several hash policies
  are folded by `combine_hash_keys` the way Envoy's HashPolicyImpl folds them.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from proxy.upstream.host import Host
from proxy.upstream.host_set import PriorityLevel

MASK64 = (1 << 64) - 1


def hash_key_for(value: bytes | str) -> int:
    """Envoy's hash of a hash_policy input (header value, cookie, source IP): xxHash64, seed 0."""
    if isinstance(value, str):
        value = value.encode()
    return xxhash.xxh64_intdigest(value)


def hash_key_for_header(values: Sequence[bytes | str]) -> int:
    """Envoy's hash of a header hash_policy: the header's values sorted (so their
    order does not matter), each hashed with xxHash64 seeded by the hash of the
    ones before it (seed 0 for the first). One value: plain `hash_key_for`.
    Checked against Envoy 1.40 with a repeated header."""
    key = 0
    for value in sorted(v.encode() if isinstance(v, str) else v for v in values):
        key = xxhash.xxh64_intdigest(value, seed=key)
    return key


def combine_hash_keys(previous: int | None, new: int) -> int:
    """Fold one more hash_policy result into the request's key, as Envoy does: the
    previous value is rotated left by one bit first, so that two identical policies
    do not cancel each other out."""
    if previous is None:
        return new
    rotated = ((previous << 1) | (previous >> 63)) & MASK64
    return rotated ^ new


NormalizedWeights = tuple[list[tuple[Host, float]], float, float]


def normalized_weights(hosts: Sequence[Host], locality_share: float = 1.0) -> NormalizedWeights:
    """[(host, weight * locality_share / total)], and the minimum and maximum
    normalized weight (Envoy's order of operations, so tables come out identical)."""
    total = sum(h.weight for h in hosts)
    weights: list[tuple[Host, float]] = []
    smallest, largest = 1.0, 0.0
    for host in hosts:
        w = host.weight * locality_share / total
        weights.append((host, w))
        smallest = min(smallest, w)
        largest = max(largest, w)
    return weights, smallest, largest


def level_weights(level: PriorityLevel) -> NormalizedWeights:
    """The normalized weights of a level's routable hosts. With locality-weighted
    balancing each locality's hosts share its weight / the sum of locality weights
    (Envoy: configured weights, not scaled by health; localities at 0 get nothing)."""
    if not level.localities:
        return normalized_weights(level.routable)
    total = sum(group.weight for group in level.localities)
    weights: list[tuple[Host, float]] = []
    smallest, largest = 1.0, 0.0
    if total == 0:
        return weights, smallest, largest
    for group in level.localities:
        members = group.hosts if level.in_panic else group.healthy
        if group.weight == 0 or not members:
            continue
        part, low, high = normalized_weights(members, group.weight / total)
        weights += part
        smallest = min(smallest, low)
        largest = max(largest, high)
    return weights, smallest, largest
