"""Address allocation, without I/O: which address a new attachment gets.

Theory of operation. A pool is a subnet with a usable range [first, last] and a
gateway. The network and broadcast addresses and the gateway are never handed
out. A new attachment gets, in order of preference:
1. the address it requested (runtimeConfig.ips, args.cni.ips or CNI_ARGS IP):
   it must lie in the range and be free, else the request fails (no fallback —
   a runtime asking for an address means it);
2. otherwise the first free address after the last one handed out, wrapping at
   the end of the range. Rotating instead of reusing the lowest freed address
   (host-local does the same) keeps a just-freed address out of use for as long
   as possible, so stale conntrack entries and ARP caches do not hit a new pod.

The caller (`cni.ipam_store`) holds the taken set and the last-reserved address
in durable storage and calls these functions inside one transaction.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container
from dataclasses import dataclass

from cni.errors import CniError, ErrorCode

IPv4 = ipaddress.IPv4Address


@dataclass(frozen=True)
class AddressPool:
    subnet: ipaddress.IPv4Network
    gateway: IPv4
    first: IPv4
    last: IPv4

    @classmethod
    def build(
        cls,
        subnet: ipaddress.IPv4Network,
        gateway: IPv4 | None = None,
        range_start: IPv4 | None = None,
        range_end: IPv4 | None = None,
    ) -> AddressPool:
        """A pool from configuration; the gateway defaults to the subnet's first host."""
        lowest, highest = subnet.network_address + 1, subnet.broadcast_address - 1
        gateway = gateway if gateway is not None else lowest
        first = range_start if range_start is not None else lowest
        last = range_end if range_end is not None else highest
        for field, value in (("ipam.gateway", gateway), ("ipam.rangeStart", first), ("ipam.rangeEnd", last)):
            if not lowest <= value <= highest:
                raise CniError(
                    ErrorCode.INVALID_NETWORK_CONFIG,
                    f"{field}: {value} is not a host address of subnet {subnet}",
                )
        if first > last:
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"ipam.rangeStart: {first} is after ipam.rangeEnd {last}")
        return cls(subnet=subnet, gateway=gateway, first=first, last=last)

    @property
    def key(self) -> str:
        """Addresses are unique per subnet (networks sharing a subnet share a pool)."""
        return str(self.subnet)

    def usable(self, address: IPv4) -> bool:
        return self.first <= address <= self.last and address != self.gateway

    def capacity(self) -> int:
        size = int(self.last) - int(self.first) + 1
        return size - (1 if self.first <= self.gateway <= self.last else 0)


def choose_address(
    pool: AddressPool,
    taken: Container[IPv4],
    last_reserved: IPv4 | None,
    requested: tuple[IPv4, ...] = (),
) -> IPv4:
    """The address for a new attachment, or a CniError saying why there is none."""
    if requested:
        for address in requested:
            if address not in pool.subnet:
                continue
            if not pool.usable(address):
                raise CniError(
                    ErrorCode.ADDRESS_UNAVAILABLE,
                    f"requested address {address} is outside the range {pool.first}-{pool.last} of {pool.subnet} or is its gateway",
                )
            if address in taken:
                raise CniError(ErrorCode.ADDRESS_UNAVAILABLE, f"requested address {address} is already allocated in {pool.subnet}")
            return address
        raise CniError(
            ErrorCode.ADDRESS_UNAVAILABLE,
            "requested address(es) " + ", ".join(map(str, requested)) + f" are not in subnet {pool.subnet}",
        )
    first, last = int(pool.first), int(pool.last)
    start = int(last_reserved) + 1 if last_reserved is not None and first <= int(last_reserved) < last else first
    size = last - first + 1
    for step in range(size):
        candidate = IPv4(first + (start - first + step) % size)
        if candidate != pool.gateway and candidate not in taken:
            return candidate
    raise CniError(
        ErrorCode.RANGE_EXHAUSTED,
        f"no free address left in {pool.subnet} (range {pool.first}-{pool.last}, {pool.capacity()} addresses)",
    )
