"""Address allocation rules (cni.ipam), without I/O."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.errors import CniError, ErrorCode
from cni.ipam import AddressPool, choose_address

A = ipaddress.IPv4Address
POOL = AddressPool.build(ipaddress.IPv4Network("10.1.0.0/29"))  # hosts .1-.6, gateway .1


def test_pool_defaults_to_all_hosts_with_the_first_as_gateway() -> None:
    assert (POOL.gateway, POOL.first, POOL.last) == (A("10.1.0.1"), A("10.1.0.1"), A("10.1.0.6"))
    assert POOL.capacity() == 5


def test_first_allocation_skips_the_gateway() -> None:
    assert choose_address(POOL, set(), None) == A("10.1.0.2")


def test_allocation_continues_after_the_last_reserved_address() -> None:
    assert choose_address(POOL, set(), A("10.1.0.4")) == A("10.1.0.5")


def test_allocation_wraps_around_at_the_end_of_the_range() -> None:
    assert choose_address(POOL, {A("10.1.0.2")}, A("10.1.0.6")) == A("10.1.0.3")


def test_exhausted_pool_is_an_error_naming_the_subnet() -> None:
    taken = {A(f"10.1.0.{i}") for i in range(2, 7)}
    with pytest.raises(CniError) as err:
        choose_address(POOL, taken, None)
    assert err.value.code == ErrorCode.RANGE_EXHAUSTED
    assert "10.1.0.0/29" in err.value.msg


def test_requested_address_is_used_when_free() -> None:
    assert choose_address(POOL, set(), None, (A("10.1.0.5"),)) == A("10.1.0.5")


def test_requested_address_taken_is_an_error() -> None:
    with pytest.raises(CniError) as err:
        choose_address(POOL, {A("10.1.0.5")}, None, (A("10.1.0.5"),))
    assert err.value.code == ErrorCode.ADDRESS_UNAVAILABLE


def test_requested_gateway_is_an_error() -> None:
    with pytest.raises(CniError) as err:
        choose_address(POOL, set(), None, (A("10.1.0.1"),))
    assert err.value.code == ErrorCode.ADDRESS_UNAVAILABLE


def test_requested_address_outside_the_subnet_is_an_error() -> None:
    with pytest.raises(CniError) as err:
        choose_address(POOL, set(), None, (A("10.2.0.5"),))
    assert err.value.code == ErrorCode.ADDRESS_UNAVAILABLE


def test_range_bounds_are_validated_against_the_subnet() -> None:
    with pytest.raises(CniError) as err:
        AddressPool.build(ipaddress.IPv4Network("10.1.0.0/24"), range_start=A("10.1.0.200"), range_end=A("10.1.0.100"))
    assert "ipam.rangeStart" in err.value.msg


@given(
    prefix=st.integers(min_value=24, max_value=29),
    frees=st.lists(st.integers(min_value=0, max_value=300), max_size=40),
)
def test_allocations_are_distinct_usable_and_fill_the_pool(prefix: int, frees: list[int]) -> None:
    pool = AddressPool.build(ipaddress.IPv4Network(f"10.9.0.0/{prefix}"))
    taken: list[ipaddress.IPv4Address] = []
    last = None
    # Interleave allocations with frees, then fill the pool completely.
    for n in frees:
        if n % 3 == 0 and taken:
            taken.pop(n % len(taken))
        else:
            try:
                last = choose_address(pool, set(taken), last)
            except CniError:
                continue
            taken.append(last)
    while len(taken) < pool.capacity():
        last = choose_address(pool, set(taken), last)
        assert pool.usable(last) and last not in taken
        taken.append(last)
    assert len(set(taken)) == pool.capacity()
    with pytest.raises(CniError):
        choose_address(pool, set(taken), last)
