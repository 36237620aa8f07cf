"""tulle-control's stores: one revisioned key-value model (`kv`), two backends.

`open_store(url, state_dir)` picks the backend from a URL:
- empty or `sqlite:` — the embedded SQLite store at `<state_dir>/tulle.db`;
- `sqlite:/path/to/file.db` — SQLite at that path;
- `etcd://HOST:PORT[/prefix]` — an etcd server (keys under `/tulle/` by default).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from control.store.etcd import EtcdStore
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
        return await EtcdStore(parts.netloc, prefix).open()
    raise StoreError(f"unsupported store {url!r}: use sqlite:[PATH] or etcd://HOST:PORT")


__all__ = [
    "CompactedError", "ConflictError", "Delete", "Entry", "EtcdStore", "Event", "EventType", "Op", "Put",
    "SQLiteStore", "Store", "StoreError", "open_store",
]
