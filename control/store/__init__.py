"""tulle-control's stores: one revisioned key-value model (`kv`), two backends.

`open_store(url, state_dir)` picks the backend from a URL:
- empty or `sqlite:` — the embedded SQLite store at `<state_dir>/tulle.db`;
- `sqlite:/path/to/file.db` — SQLite at that path;
- `etcd://HOST:PORT[/prefix][?max-txn-ops=N]` — an etcd server (keys under `/tulle/`
  by default; N is the server's --max-txn-ops, 128 unless raised there).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from control.store.etcd import DEFAULT_MAX_TXN_OPS, EtcdStore, TransactionTooLargeError
from control.store.kv import (
    CompactedError,
    ConflictError,
    Delete,
    Entry,
    Event,
    EventType,
    Op,
    Put,
    Store,
    StoreError,
)
from control.store.sqlite import SQLiteStore


async def open_store(url: str, state_dir: Path) -> Store:
    if not url or url == "sqlite:":
        return await SQLiteStore(state_dir / "tulle.db").open()
    if url.startswith("sqlite:"):
        return await SQLiteStore(Path(url.removeprefix("sqlite:"))).open()
    parts = urlsplit(url)
    if parts.scheme == "etcd" and parts.netloc:
        prefix = parts.path.rstrip("/") + "/" if parts.path not in ("", "/") else "/tulle/"
        query = parse_qs(parts.query)
        try:
            max_txn_ops = int(query.get("max-txn-ops", [DEFAULT_MAX_TXN_OPS])[0])
        except ValueError:
            raise StoreError(f"bad max-txn-ops in {url!r}: must be a number") from None
        return await EtcdStore(parts.netloc, prefix, max_txn_ops).open()
    raise StoreError(f"unsupported store {url!r}: use sqlite:[PATH] or etcd://HOST:PORT")


__all__ = [
    "CompactedError", "ConflictError", "Delete", "Entry", "EtcdStore", "Event", "EventType", "Op", "Put",
    "SQLiteStore", "Store", "StoreError", "TransactionTooLargeError", "open_store",
]
