"""The store contract (control/store/kv.py), run against SQLite and a real etcd alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control.store import (
    CompactedError,
    ConflictError,
    Delete,
    EtcdStore,
    Event,
    EventType,
    Put,
    SQLiteStore,
    Store,
    StoreError,
)
from tests.control.conftest import StoreFactory
from tests.control.etcd_server import EtcdServer, etcd_server


async def next_batch(events: AsyncIterator[list[Event]]) -> list[Event]:
    return await asyncio.wait_for(anext(events), 5)


def test_put_then_get_returns_value_and_revisions(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        revision = await store.commit([Put("Pod/default/a", b"1")])
        entry = await store.get("Pod/default/a")
        assert entry is not None
        assert (entry.value, entry.create_revision, entry.mod_revision) == (b"1", revision, revision)
        assert await store.get("Pod/default/missing") is None

    stores.run(scenario)


def test_a_transaction_takes_one_revision_for_all_its_writes(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        before = await store.revision()
        revision = await store.commit([Put("a", b"1"), Put("b", b"2")])
        assert revision == before + 1
        a, b = await store.get("a"), await store.get("b")
        assert a is not None and b is not None and a.mod_revision == b.mod_revision == revision

    stores.run(scenario)


def test_update_keeps_create_revision_and_moves_mod_revision(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        first = await store.commit([Put("k", b"1")])
        second = await store.commit([Put("k", b"2", expect=first)])
        entry = await store.get("k")
        assert entry is not None and (entry.create_revision, entry.mod_revision) == (first, second)

    stores.run(scenario)


def test_range_lists_a_prefix_in_key_order_at_a_revision(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        revision = await store.commit([Put("Pod/ns/b", b"b"), Put("Pod/ns/a", b"a"), Put("Service/ns/a", b"s")])
        entries, at = await store.range("Pod/")
        assert [e.key for e in entries] == ["Pod/ns/a", "Pod/ns/b"]
        assert at >= revision

    stores.run(scenario)


def test_expectation_mismatch_writes_nothing_and_names_the_key(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        first = await store.commit([Put("k", b"1")])
        with pytest.raises(ConflictError) as caught:
            await store.commit([Put("other", b"x", expect=0), Put("k", b"2", expect=first - 1)])
        assert caught.value.key == "k" and caught.value.actual == first
        assert await store.get("other") is None
        entry = await store.get("k")
        assert entry is not None and entry.value == b"1"

    stores.run(scenario)


def test_expect_zero_means_must_not_exist(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        await store.commit([Put("k", b"1", expect=0)])
        with pytest.raises(ConflictError):
            await store.commit([Put("k", b"2", expect=0)])

    stores.run(scenario)


def test_deleting_only_absent_keys_changes_nothing(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        await store.commit([Put("k", b"1")])
        before = await store.revision()
        assert await store.commit([Delete("absent")]) == before
        assert await store.revision() == before

    stores.run(scenario)


def test_watch_delivers_puts_and_deletes_in_revision_order(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        start = await store.revision()
        events = store.watch("Pod/", start)
        r1 = await store.commit([Put("Pod/ns/a", b"1")])
        r2 = await store.commit([Put("Pod/ns/a", b"2"), Put("Service/ns/x", b"ignored")])
        r3 = await store.commit([Delete("Pod/ns/a")])
        batches = [await next_batch(events) for _ in range(3)]
        assert [(e.type, e.revision, e.value, e.created) for b in batches for e in b] == [
            (EventType.PUT, r1, b"1", True),
            (EventType.PUT, r2, b"2", False),
            (EventType.DELETE, r3, b"2", False),
        ]
        await events.aclose()  # type: ignore[attr-defined]

    stores.run(scenario)


def test_watch_groups_a_transaction_into_one_batch_in_write_order(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        start = await store.revision()
        events = store.watch("", start)
        await store.commit([Put("b", b"2"), Put("a", b"1")])
        batch = await next_batch(events)
        assert [e.key for e in batch] == ["b", "a"]
        await events.aclose()  # type: ignore[attr-defined]

    stores.run(scenario)


def test_watch_resumes_from_a_past_revision(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        r1 = await store.commit([Put("k", b"1")])
        r2 = await store.commit([Put("k", b"2")])
        r3 = await store.commit([Put("k", b"3")])
        events = store.watch("k", r1)
        assert [b[0].revision for b in [await next_batch(events), await next_batch(events)]] == [r2, r3]
        await events.aclose()  # type: ignore[attr-defined]

    stores.run(scenario)


def test_watch_from_before_the_compacted_history_raises_compacted(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        r1 = await store.commit([Put("k", b"1")])
        r2 = await store.commit([Put("k", b"2")])
        await store.commit([Put("k", b"3")])
        await store.compact(r2)
        with pytest.raises(CompactedError):
            await next_batch(store.watch("k", r1 - 1))

    stores.run(scenario)


def test_a_second_process_cannot_open_the_same_sqlite_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = await SQLiteStore(tmp_path / "tulle.db").open()
        try:
            with pytest.raises(StoreError, match="in use by another tulle-control"):
                await SQLiteStore(tmp_path / "tulle.db").open()
        finally:
            await first.close()

    asyncio.run(scenario())


def test_a_write_through_one_etcd_client_reaches_another_clients_watch(tmp_path: Path, etcd: EtcdServer) -> None:
    stores = StoreFactory("etcd", tmp_path, etcd)

    async def scenario(store: Store) -> None:
        other = await stores.open()
        try:
            events = other.watch("", await other.revision())
            revision = await store.commit([Put("shared", b"v")])
            batch = await next_batch(events)
            assert (batch[0].key, batch[0].revision) == ("shared", revision)
            entry = await other.get("shared")
            assert entry is not None and entry.value == b"v"
            await events.aclose()  # type: ignore[attr-defined]
        finally:
            await other.close()

    stores.run(scenario)


def test_an_etcd_watch_survives_an_etcd_restart_and_resumes_where_it_was() -> None:
    async def scenario(server: EtcdServer) -> None:
        store = await EtcdStore(server.endpoint).open()
        try:
            events = store.watch("", await store.revision())
            first = await store.commit([Put("before", b"1")])
            assert (await next_batch(events))[0].revision == first
            pending = asyncio.ensure_future(anext(events))
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
            second = await store.commit([Put("after", b"2")])
            batch = await asyncio.wait_for(pending, 20)
            assert (batch[0].key, batch[0].revision) == ("after", second)
            await events.aclose()  # type: ignore[attr-defined]
        finally:
            await store.close()

    with etcd_server() as server:
        asyncio.run(scenario(server))


def test_a_transaction_may_touch_a_key_only_once(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        with pytest.raises(ValueError, match="touches k twice"):
            await store.commit([Put("k", b"1"), Delete("k")])
        assert await store.get("k") is None

    stores.run(scenario)
