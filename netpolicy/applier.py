"""Runs libnftables JSON documents in a network namespace, one atomic transaction each.

The thin I/O shell around `netpolicy.ruleset`: a libnftables context talks to the kernel
over a netlink socket that belongs to the namespace it was opened in, so the context for
a named namespace is opened inside it (`netpolicy.netns.run_in`) and then acts there
from any thread. Without a name, the caller's own namespace is
used (the agent runs inside its node's namespace).

A document is one `nft -j -f` batch: the kernel commits all of it or none of it, so a
failed apply leaves the previous ruleset in force (`NftError` says why).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import nftables

from netpolicy.netns import run_in
from netpolicy.ruleset import FAMILY, TABLE


class NftError(RuntimeError):
    """The kernel or libnftables refused a transaction; nothing of it was applied."""


class NftApplier:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._nft = _context_in(netns) if netns else _new_context()
        self._lock = threading.Lock()

    def apply(self, document: dict[str, Any]) -> None:
        """Commits `document` atomically; raises NftError (and changes nothing) on failure."""
        if not document.get("nftables"):
            return
        with self._lock:
            rc, _, error = self._nft.cmd(json.dumps(document))
        if rc != 0:
            raise NftError(f"nftables transaction failed in netns {self.netns or '(own)'}: {error.strip()}")

    def list_table(self, table: str = TABLE) -> dict[str, Any]:
        with self._lock:
            rc, output, error = self._nft.cmd(f"list table {FAMILY} {table}")
        if rc != 0:
            raise NftError(f"listing {FAMILY} {table} in netns {self.netns or '(own)'}: {error.strip()}")
        listed: dict[str, Any] = json.loads(output)
        return listed

    def has_table(self, table: str = TABLE) -> bool:
        try:
            self.list_table(table)
        except NftError:
            return False
        return True

    def delete_table(self, table: str = TABLE) -> None:
        with self._lock:
            self._nft.cmd(f"delete table {FAMILY} {table}")


def _new_context() -> Any:
    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(False)
    return nft


def _context_in(netns: str) -> Any:
    try:
        return run_in(netns, _new_context)
    except OSError as e:
        raise NftError(f"opening nftables in netns {netns}: {e}") from e
