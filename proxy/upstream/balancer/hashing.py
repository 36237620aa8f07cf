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

import xxhash

from proxy.upstream.host import Host

MASK64 = (1 << 64) - 1


def hash_key_for(value: bytes | str) -> int:
    """Envoy's hash of a hash_policy input (header value, cookie, source IP): xxHash64, seed 0."""
    if isinstance(value, str):
        value = value.encode()
    return xxhash.xxh64_intdigest(value)


def combine_hash_keys(previous: int | None, new: int) -> int:
    """Fold one more hash_policy result into the request's key, as Envoy does: the
    previous value is rotated left by one bit first, so that two identical policies
    do not cancel each other out."""
    if previous is None:
        return new
    rotated = ((previous << 1) | (previous >> 63)) & MASK64
    return rotated ^ new


def normalized_weights(hosts: tuple[Host, ...]) -> tuple[list[tuple[Host, float]], float, float]:
    """[(host, weight / total)], and the minimum and maximum normalized weight."""
    total = sum(h.weight for h in hosts)
    weights: list[tuple[Host, float]] = []
    smallest, largest = 1.0, 0.0
    for host in hosts:
        w = host.weight * 1.0 / total
        weights.append((host, w))
        smallest = min(smallest, w)
        largest = max(largest, w)
    return weights, smallest, largest
