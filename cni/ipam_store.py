"""Durable allocations: one SQLite database per agent (its state dir).

Rules:
- Key: (network name, container ID, interface name), as the spec asks of plugins
  that keep state. Addresses are unique per pool (subnet): a UNIQUE constraint,
  so even a bug above cannot hand one address out twice.
- Crash safety: an ADD first records its allocation as `pending` and commits
  before any interface exists; only when the datapath is up does it become
  `attached`. WAL with synchronous=NORMAL: a commit is in the WAL file before
  the call returns, so it survives the agent being killed at any instant; only
  an OS crash or power loss can lose the last commits — and those take every
  veth and pod namespace with them, so no surviving pod can hold a lost
  address. (FULL would add an fsync, several ms, to every ADD and DEL.) An agent killed mid-ADD finds the
  pending rows at start-up and undoes them (`cni.backend` removes their host
  veth, then the row). So a restart leaks nothing, and since an address is
  reserved before it is configured, it is never handed out twice.
- A DEL marks its allocation `releasing` and answers; the veth deletion and the
  row's removal follow on the datapath thread. A releasing address stays taken
  until then, and start-up finishes any release a killed agent left.
- Every write is one transaction (BEGIN IMMEDIATE), so concurrent agents on one
  file — never intended, but possible by mistake — still cannot collide.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from cni.errors import CniError, ErrorCode
from cni.ipam import AddressPool, choose_address

_SCHEMA = """
CREATE TABLE IF NOT EXISTS allocation (
    network       TEXT NOT NULL,
    container_id  TEXT NOT NULL,
    ifname        TEXT NOT NULL,
    pool          TEXT NOT NULL,
    address       TEXT NOT NULL,
    host_ifname   TEXT NOT NULL,
    netns         TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'attached', 'releasing')),
    pod_namespace TEXT NOT NULL DEFAULT '',
    pod_name      TEXT NOT NULL DEFAULT '',
    result        TEXT,
    PRIMARY KEY (network, container_id, ifname),
    UNIQUE (pool, address)
);
CREATE TABLE IF NOT EXISTS last_reserved (
    pool    TEXT PRIMARY KEY,
    address TEXT NOT NULL
);
"""

_COLUMNS = "network, container_id, ifname, pool, address, host_ifname, netns, state, pod_namespace, pod_name, result"


@dataclass(frozen=True)
class AllocationKey:
    network: str
    container_id: str
    ifname: str


@dataclass(frozen=True)
class Allocation:
    key: AllocationKey
    pool: str
    address: ipaddress.IPv4Address
    host_ifname: str
    netns: str
    state: str
    pod_namespace: str = ""
    pod_name: str = ""
    result: str | None = None


class AllocationStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise CniError(ErrorCode.STATE_FAILURE, f"cannot open allocation store {path}: {exc}") from None
        self.path = path

    def close(self) -> None:
        self._db.close()

    def reserve(
        self,
        key: AllocationKey,
        pool: AddressPool,
        requested: tuple[ipaddress.IPv4Address, ...],
        host_ifname: str,
        netns: str,
        pod_namespace: str = "",
        pod_name: str = "",
    ) -> ipaddress.IPv4Address:
        """Chooses and durably records (as pending) the attachment's address."""
        with self._transaction():
            if self._db.execute(
                "SELECT 1 FROM allocation WHERE network=? AND container_id=? AND ifname=?",
                (key.network, key.container_id, key.ifname),
            ).fetchone():
                raise CniError(
                    ErrorCode.INTERFACE_EXISTS,
                    f"container {key.container_id} already has interface {key.ifname} on network {key.network} (ADD without DEL)",
                )
            taken = _TakenAddresses(self._db, pool.key)
            row = self._db.execute("SELECT address FROM last_reserved WHERE pool=?", (pool.key,)).fetchone()
            last = ipaddress.IPv4Address(row[0]) if row else None
            address = choose_address(pool, taken, last, requested)
            self._db.execute(
                f"INSERT INTO allocation ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,'pending',?,?,NULL)",
                (key.network, key.container_id, key.ifname, pool.key, str(address), host_ifname, netns, pod_namespace, pod_name),
            )
            self._db.execute(
                "INSERT INTO last_reserved (pool, address) VALUES (?, ?) ON CONFLICT(pool) DO UPDATE SET address=excluded.address",
                (pool.key, str(address)),
            )
        return address

    def mark_attached(self, key: AllocationKey, result: str) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE allocation SET state='attached', result=? WHERE network=? AND container_id=? AND ifname=?",
                (result, key.network, key.container_id, key.ifname),
            )

    def mark_releasing(self, key: AllocationKey) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE allocation SET state='releasing' WHERE network=? AND container_id=? AND ifname=?",
                (key.network, key.container_id, key.ifname),
            )

    def release(self, key: AllocationKey) -> None:
        with self._transaction():
            self._db.execute(
                "DELETE FROM allocation WHERE network=? AND container_id=? AND ifname=?",
                (key.network, key.container_id, key.ifname),
            )

    def get(self, key: AllocationKey) -> Allocation | None:
        rows = self._select("WHERE network=? AND container_id=? AND ifname=?", (key.network, key.container_id, key.ifname))
        return rows[0] if rows else None

    def all(self, network: str | None = None, state: str | None = None) -> list[Allocation]:
        clauses, params = [], []
        if network is not None:
            clauses.append("network=?")
            params.append(network)
        if state is not None:
            clauses.append("state=?")
            params.append(state)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._select(where + " ORDER BY network, container_id, ifname", tuple(params))

    def _select(self, where: str, params: tuple[str, ...]) -> list[Allocation]:
        with self._lock:
            try:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM allocation {where}", params).fetchall()
            except sqlite3.Error as exc:
                raise CniError(ErrorCode.STATE_FAILURE, f"reading allocation store {self.path}: {exc}") from None
        return [
            Allocation(
                key=AllocationKey(r[0], r[1], r[2]),
                pool=r[3],
                address=ipaddress.IPv4Address(r[4]),
                host_ifname=r[5],
                netns=r[6],
                state=r[7],
                pod_namespace=r[8],
                pod_name=r[9],
                result=r[10],
            )
            for r in rows
        ]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock, self.path)


class _TakenAddresses:
    """The pool's allocated addresses as a lazy container: `choose_address` probes
    a candidate or two (one indexed lookup each) instead of loading the pool."""

    def __init__(self, db: sqlite3.Connection, pool: str) -> None:
        self._db, self._pool = db, pool

    def __contains__(self, address: object) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM allocation WHERE pool=? AND address=?", (self._pool, str(address))
            ).fetchone()
            is not None
        )


class _Transaction:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
        self._db, self._lock, self._path = db, lock, path

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._lock.release()
            raise CniError(ErrorCode.STATE_FAILURE, f"allocation store {self._path}: {exc}") from None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if kind is None:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as error:
                    self._db.execute("ROLLBACK")
                    raise CniError(ErrorCode.STATE_FAILURE, f"allocation store {self._path}: {error}") from None
            else:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise CniError(ErrorCode.STATE_FAILURE, f"allocation store {self._path}: {exc}") from None
        finally:
            self._lock.release()
