"""The embedded store: one SQLite file under the state dir.

Durability: WAL journal with `synchronous=FULL`, so a transaction is fsynced to the
WAL before `commit` returns. An acknowledged write therefore survives kill -9 of the
process (and a power cut); SQLite replays the WAL on the next open.

Theory of operation:
- `kv` holds the current value of every key with its create and mod revisions;
  `log` holds every change (revision, position in its transaction, type, key, value)
  for watches; `meta` holds the current revision and the compaction point.
- All SQL runs on one worker thread with one connection, so the event loop never
  blocks on an fsync and reads see a consistent snapshot between transactions.
- A watcher replays `log` after its revision and then sleeps until a commit wakes it;
  it re-reads `log` on every wake-up, so catching up and following are one loop and no
  event falls between them.
- The log keeps the last `history` revisions; older ones are dropped every 1,000
  revisions, and watching from before the kept history raises `CompactedError`.
- The file is locked (flock) while open: a second tulle-control on the same state
  dir would not see the first one's watch notifications, so it is refused.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from control.store.kv import (
    CompactedError,
    ConflictError,
    Entry,
    Event,
    EventType,
    Op,
    Put,
    Store,
    StoreError,
    check_distinct,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    created INTEGER NOT NULL,
    prev_value BLOB,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""

COMPACT_EVERY = 1000


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    # Keys are text; U+10FFFF sorts after every character a key can contain.
    return prefix, prefix + "\U0010ffff"


class SQLiteStore(Store):
    def __init__(self, path: Path, history: int = 10_000) -> None:
        self.path = Path(path)
        self.url = f"sqlite:{self.path}"
        self.history = history
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tulle-sqlite")
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._wakeups: set[asyncio.Event] = set()
        self._closed = False

    async def open(self) -> SQLiteStore:
        await self._run(self._open)
        return self

    def _open(self) -> None:
        # The configuration is the operator's: nobody else reads it.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path} is in use by another tulle-control") from None
        self._lock_fd = fd
        if not self.path.exists():
            self.path.touch(mode=0o600)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise StoreError(f"{self.url} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "SQLiteStore.open() first"
        return self._db

    def _meta(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    async def get(self, key: str) -> Entry | None:
        row = await self._run(
            lambda: self.db.execute(
                "SELECT key, value, create_revision, mod_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
        )
        return Entry(*row) if row else None

    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        def read() -> tuple[list[Entry], int]:
            lo, hi = _prefix_bounds(prefix)
            rows = self.db.execute(
                "SELECT key, value, create_revision, mod_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (lo, hi),
            ).fetchall()
            return [Entry(*row) for row in rows], self._meta("revision")

        result: tuple[list[Entry], int] = await self._run(read)
        return result

    async def revision(self) -> int:
        revision: int = await self._run(self._meta, "revision")
        return revision

    async def commit(self, ops: Sequence[Op]) -> int:
        check_distinct(ops)
        revision, changed = await self._run(self._commit, list(ops))
        if changed:
            for wakeup in self._wakeups:
                wakeup.set()
        return int(revision)

    def _commit(self, ops: list[Op]) -> tuple[int, bool]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            current: dict[str, tuple[bytes, int]] = {}
            for op in ops:
                row = db.execute("SELECT value, mod_revision FROM kv WHERE key = ?", (op.key,)).fetchone()
                actual = row[1] if row else 0
                if op.expect is not None and op.expect != actual:
                    raise ConflictError(op.key, op.expect, actual)
                if row:
                    current[op.key] = (row[0], row[1])
            revision = self._meta("revision") + 1
            seq = 0
            for op in ops:
                if isinstance(op, Put):
                    created = op.key not in current
                    db.execute(
                        "INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value = excluded.value, mod_revision = excluded.mod_revision",
                        (op.key, op.value, revision, revision),
                    )
                    previous = None if created else current[op.key][0]
                    db.execute(
                        "INSERT INTO log VALUES (?, ?, 'PUT', ?, ?, ?, ?)", (revision, seq, op.key, op.value, created, previous)
                    )
                    seq += 1
                elif op.key in current:
                    db.execute("DELETE FROM kv WHERE key = ?", (op.key,))
                    db.execute(
                        "INSERT INTO log VALUES (?, ?, 'DELETE', ?, ?, 0, NULL)", (revision, seq, op.key, current[op.key][0])
                    )
                    seq += 1
            if seq == 0:
                db.execute("ROLLBACK")
                return revision - 1, False
            db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
            if revision % COMPACT_EVERY == 0 and revision > self.history:
                compacted = revision - self.history
                db.execute("DELETE FROM log WHERE revision <= ?", (compacted,))
                db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (compacted,))
            db.execute("COMMIT")
            return revision, True
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _events_after(self, prefix: str, after: int) -> tuple[list[Event], int]:
        """Events in (after, upto], whole revisions only, and `upto` (at most 1,000 revisions on)."""
        compacted = self._meta("compacted")
        if after < compacted:
            raise CompactedError(after, compacted)
        upto = min(self._meta("revision"), after + 1000)
        lo, hi = _prefix_bounds(prefix)
        rows = self.db.execute(
            "SELECT type, key, revision, value, created, prev_value FROM log "
            "WHERE revision > ? AND revision <= ? AND key >= ? AND key < ? ORDER BY revision, seq",
            (after, upto, lo, hi),
        ).fetchall()
        return [Event(EventType(t), k, r, v, bool(c), p) for t, k, r, v, c, p in rows], upto

    async def watch(self, prefix: str, after: int) -> AsyncIterator[list[Event]]:
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            while True:
                wakeup.clear()
                events, upto = await self._run(self._events_after, prefix, after)
                if upto == after:
                    await wakeup.wait()
                    continue
                batch: list[Event] = []
                for event in events:
                    if batch and event.revision != batch[0].revision:
                        yield batch
                        batch = []
                    batch.append(event)
                if batch:
                    yield batch
                after = upto
        finally:
            self._wakeups.discard(wakeup)

    async def compact(self, revision: int) -> None:
        def compact() -> None:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM log WHERE revision < ?", (revision,))
            self.db.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'", (revision - 1,))
            self.db.execute("COMMIT")

        await self._run(compact)

    async def close(self) -> None:
        if self._closed:
            return
        await self._run(self._close)
        self._closed = True
        self._executor.shutdown(wait=True)
        for wakeup in self._wakeups:
            wakeup.set()

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
