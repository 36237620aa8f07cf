"""Fixtures of the control-plane tests: stores of both kinds, a real etcd server.

Tests are plain functions that run one coroutine with `asyncio.run`, so every store
and channel lives and dies inside the test's own event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from control.store import EtcdStore, SQLiteStore, Store
from tests.control.etcd_server import EtcdServer, etcd_server


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


class StoreFactory:
    """Opens fresh, isolated stores of one backend (SQLite: a new file; etcd: a new key prefix)."""

    def __init__(self, backend: str, tmp_path: Path, etcd: EtcdServer | None) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.etcd = etcd
        self.prefix = f"/tulle-test-{uuid.uuid4().hex[:12]}/"

    async def open(self, name: str = "tulle.db") -> Store:
        if self.backend == "sqlite":
            return await SQLiteStore(self.tmp_path / name).open()
        assert self.etcd is not None
        return await EtcdStore(self.etcd.endpoint, self.prefix).open()

    def run(self, scenario: Callable[[Store], Awaitable[None]]) -> None:
        async def main() -> None:
            store = await self.open()
            try:
                await asyncio.wait_for(scenario(store), 30)
            finally:
                await store.close()

        asyncio.run(main())


@pytest.fixture(params=["sqlite", "etcd"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    etcd = request.getfixturevalue("etcd") if request.param == "etcd" else None
    return StoreFactory(request.param, tmp_path, etcd)
