"""Address allocation from a CIDR: Service cluster IPs and node pod CIDRs.

Rules:
- A pool hands out, lowest first, either single host addresses of its CIDR (cluster
  IPs; the network and broadcast addresses are never given out) or equal subnets of
  a fixed prefix length (pod CIDRs: /24s of 10.244.0.0/16).
- Who holds what is stored, not remembered: each allocation is a store key
  `_alloc/<pool>/<value>` whose value is the holder's object key, written in the same
  transaction as the holder and created only if absent. Two replicas (or two racing
  applies) that pick the same value therefore cannot both win: one transaction fails
  its "absent" expectation and that caller picks again.
- This module is pure: it turns the set of taken values into the next free one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

ALLOCATION_PREFIX = "_alloc/"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PoolExhaustedError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    cidr: Network
    # None: single addresses; otherwise the prefix length of the subnets handed out.
    subnet_prefix: int | None = None

    @classmethod
    def addresses(cls, name: str, cidr: str) -> Pool:
        return cls(name, ipaddress.ip_network(cidr))

    @classmethod
    def subnets(cls, name: str, cidr: str, prefix: int) -> Pool:
        network = ipaddress.ip_network(cidr)
        if prefix < network.prefixlen or prefix > network.max_prefixlen:
            raise ValueError(f"cannot cut /{prefix} subnets from {network}")
        return cls(name, network, prefix)

    @property
    def key_prefix(self) -> str:
        return f"{ALLOCATION_PREFIX}{self.name}/"

    def key(self, value: str) -> str:
        return self.key_prefix + value.replace("/", "_")

    def _candidates(self) -> Iterator[str]:
        if self.subnet_prefix is None:
            yield from (str(ip) for ip in self.cidr.hosts())
        else:
            yield from (str(net) for net in self.cidr.subnets(new_prefix=self.subnet_prefix))

    def contains(self, value: str) -> bool:
        try:
            if self.subnet_prefix is None:
                ip = ipaddress.ip_address(value)
                return ip in self.cidr and ip not in (self.cidr.network_address, self.cidr.broadcast_address)
            net = ipaddress.ip_network(value)
            return net.prefixlen == self.subnet_prefix and net.subnet_of(self.cidr)  # type: ignore[arg-type]
        except ValueError:
            return False

    def next_free(self, taken: set[str]) -> str:
        for candidate in self._candidates():
            if candidate not in taken:
                return candidate
        raise PoolExhaustedError(f"no free {'address' if self.subnet_prefix is None else 'subnet'} left in {self.cidr}")

    def value_of(self, key: str) -> str:
        value = key.removeprefix(self.key_prefix)
        return value.replace("_", "/")
