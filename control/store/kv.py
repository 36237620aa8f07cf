"""The store's model: a revisioned key-value space with transactions and watches,
etcd's v3 model, which both backends (SQLite, etcd) implement the same way.

Rules:
- The store has one revision counter. Every transaction that changes something takes
  the next revision; all its puts and deletes carry that revision. A transaction that
  changes nothing (deleting absent keys only) does not advance it.
- Each key has a create revision and a mod revision (the revision of its last change).
  A `Put`/`Delete` may name the mod revision it expects (`expect`): 0 means "must not
  exist", None means "whatever is there". If any expectation fails, nothing is written
  and `ConflictError` names the first key that failed.
- A transaction may touch a key once.
- `watch(prefix, after)` yields, for every later revision that touched keys under
  `prefix`, that revision's events in the order the transaction wrote them. History
  older than the store's compaction point is gone: watching from there raises
  `CompactedError`, and the watcher must list again.
- Values are opaque bytes (tulle-control stores JSON documents).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    expect: int | None = None


Op = Put | Delete


class EventType(Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    key: str
    revision: int
    # After a PUT: the new value. After a DELETE: the value the key had.
    value: bytes
    # True when the PUT created the key (no value before it).
    created: bool = False
    # The value before a PUT that updated the key, when the store still has it.
    prev_value: bytes | None = None


class StoreError(Exception):
    """The store cannot serve the request (unreachable, corrupted, closed)."""


class ConflictError(Exception):
    def __init__(self, key: str, expected: int, actual: int) -> None:
        state = "absent" if actual == 0 else f"at revision {actual}"
        super().__init__(f"{key}: expected revision {expected}, found it {state}")
        self.key = key
        self.expected = expected
        self.actual = actual


class CompactedError(Exception):
    def __init__(self, revision: int, compacted: int) -> None:
        super().__init__(
            f"revision {revision} is older than the store's history (compacted at {compacted}): list again"
        )
        self.revision = revision
        self.compacted = compacted


class Store(abc.ABC):
    """A revisioned key-value store (see the module docstring for the rules)."""

    #: How to name this store to an operator: "sqlite:/var/lib/tulle/tulle.db".
    url: str

    @abc.abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abc.abstractmethod
    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        """Every entry under `prefix`, in key order, and the revision they were read at."""

    @abc.abstractmethod
    async def commit(self, ops: Sequence[Op]) -> int:
        """Apply all of `ops` or none; the transaction's revision (or the current one if
        nothing changed)."""

    @abc.abstractmethod
    def watch(self, prefix: str, after: int) -> AsyncIterator[list[Event]]:
        """Events under `prefix` with revisions > `after`, one list per revision."""

    @abc.abstractmethod
    async def revision(self) -> int: ...

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget the history before `revision` (etcd's Compact): watching from an
        earlier revision raises `CompactedError`; current values stay."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def check_distinct(ops: Sequence[Op]) -> None:
    """A transaction touches each key once (etcd refuses it otherwise; so does SQLite here)."""
    seen: set[str] = set()
    for op in ops:
        if op.key in seen:
            raise ValueError(f"a transaction may touch a key once, and touches {op.key} twice")
        seen.add(op.key)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"
