"""Durable allocations (cni.ipam_store): what survives a restart."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cni.errors import CniError, ErrorCode
from cni.ipam import AddressPool
from cni.ipam_store import AllocationKey, AllocationStore

POOL = AddressPool.build(ipaddress.IPv4Network("10.5.0.0/24"))


def test_reserved_addresses_survive_reopening(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path / "a.db")
    first = store.reserve(AllocationKey("n", "c1", "eth0"), POOL, (), "tlv1", "/x")
    store.close()
    reopened = AllocationStore(tmp_path / "a.db")
    second = reopened.reserve(AllocationKey("n", "c2", "eth0"), POOL, (), "tlv2", "/y")
    assert first != second
    assert [a.key.container_id for a in reopened.all()] == ["c1", "c2"]


def test_new_reservations_are_pending_until_marked_attached(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path / "a.db")
    key = AllocationKey("n", "c1", "eth0")
    store.reserve(key, POOL, (), "tlv1", "/x")
    assert [a.key for a in store.all(state="pending")] == [key]
    store.mark_attached(key, "{}")
    assert store.all(state="pending") == []
    assert store.get(key) is not None and store.get(key).state == "attached"  # type: ignore[union-attr]


def test_rotation_continues_after_a_restart(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path / "a.db")
    key = AllocationKey("n", "c1", "eth0")
    first = store.reserve(key, POOL, (), "tlv1", "/x")
    store.release(key)
    store.close()
    again = AllocationStore(tmp_path / "a.db").reserve(AllocationKey("n", "c2", "eth0"), POOL, (), "tlv2", "/y")
    assert again == first + 1


def test_same_attachment_twice_is_refused(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path / "a.db")
    key = AllocationKey("n", "c1", "eth0")
    store.reserve(key, POOL, (), "tlv1", "/x")
    with pytest.raises(CniError) as err:
        store.reserve(key, POOL, (), "tlv1", "/x")
    assert err.value.code == ErrorCode.INTERFACE_EXISTS


def test_networks_sharing_a_subnet_share_its_addresses(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path / "a.db")
    a = store.reserve(AllocationKey("net-a", "c1", "eth0"), POOL, (), "tlv1", "/x")
    with pytest.raises(CniError):
        store.reserve(AllocationKey("net-b", "c1", "eth0"), POOL, (a,), "tlv2", "/x")


def test_release_of_an_unknown_attachment_is_a_no_op(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path / "a.db")
    store.release(AllocationKey("n", "nope", "eth0"))
    assert store.all() == []
