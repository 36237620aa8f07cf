"""Address pools (control/allocation.py, pure): lowest free first, never a taken value."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.allocation import Pool, PoolExhaustedError


def test_addresses_skip_the_network_and_broadcast_addresses() -> None:
    pool = Pool.addresses("ips", "10.96.0.0/30")
    assert pool.next_free(set()) == "10.96.0.1"
    assert pool.next_free({"10.96.0.1"}) == "10.96.0.2"
    with pytest.raises(PoolExhaustedError):
        pool.next_free({"10.96.0.1", "10.96.0.2"})
    assert not pool.contains("10.96.0.0") and not pool.contains("10.96.0.3")


def test_subnets_are_cut_at_the_configured_prefix() -> None:
    pool = Pool.subnets("cidrs", "10.244.0.0/16", 24)
    assert pool.next_free({"10.244.0.0/24"}) == "10.244.1.0/24"
    assert pool.contains("10.244.255.0/24")
    assert not pool.contains("10.244.1.0/25") and not pool.contains("10.245.0.0/24")


def test_a_prefix_wider_than_the_cidr_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot cut /8 subnets"):
        Pool.subnets("cidrs", "10.244.0.0/16", 8)


def test_store_keys_round_trip_to_values() -> None:
    pool = Pool.subnets("pod-cidr", "10.244.0.0/16", 24)
    assert pool.value_of(pool.key("10.244.3.0/24")) == "10.244.3.0/24"
    assert "/" not in pool.key("10.244.3.0/24").removeprefix(pool.key_prefix)


@given(st.sets(st.integers(min_value=1, max_value=254), max_size=253))
def test_next_free_is_the_lowest_address_not_taken(taken_hosts: set[int]) -> None:
    pool = Pool.addresses("ips", "192.168.7.0/24")
    taken = {f"192.168.7.{h}" for h in taken_hosts}
    chosen = pool.next_free(taken)
    assert chosen not in taken and pool.contains(chosen)
    host = int(ipaddress.ip_address(chosen)) - int(ipaddress.ip_address("192.168.7.0"))
    assert all(h in taken_hosts for h in range(1, host))
