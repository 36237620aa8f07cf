"""A node's policy enforcement, as the agent drives it: the ruleset in force, and the
transactions that move the kernel from one cluster state to the next.

Rules:
- `start` (agent start or restart) replaces the whole table in one transaction. Until
  then the kernel keeps enforcing whatever the previous agent left — a restart never
  opens a window without rules.
- `update` compiles the new state against the ruleset in force and applies only the
  difference in one transaction: map elements, plus a pod's own map and chain when a
  local pod gains or loses per-class decisions; the shared chains never change. If the kernel refuses it, nothing of it
  is applied and the ruleset in force is unchanged (the error propagates).
- Fail-closed pod start (the CNI ADD path): `hold(ip)` before the pod's interface comes
  up makes every packet from or to that address drop; the `update` that includes the pod
  programs its rules *and* releases the hold in the same transaction. A pod whose update
  fails stays held: unreachable rather than unprotected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from netpolicy.applier import NftApplier
from netpolicy.cluster import ClusterState, Pod
from netpolicy.compiler import NodeCompiler
from netpolicy.ruleset import TABLE, Ruleset, diff_document, full_document


@dataclass(frozen=True, slots=True)
class Transaction:
    """What one apply did: the number of commands and of elements it carried."""

    commands: int
    elements: int
    full: bool


class NodeEnforcer:
    def __init__(self, node: str, applier: NftApplier, table: str = TABLE) -> None:
        self.node = node
        self.applier = applier
        self.table = table
        self.ruleset: Ruleset | None = None  # what the kernel runs, once we applied it
        self._held: frozenset[int] = frozenset()
        self._compiler = NodeCompiler(node)

    def start(self, state: ClusterState) -> Transaction:
        self._compiler = NodeCompiler(self.node)
        ruleset = self._compiler.compile(state).with_pending(self._held)
        document = full_document(ruleset, self.table)
        self.applier.apply(document)
        self.ruleset = ruleset
        return _summary(document, full=True)

    def update(self, state: ClusterState) -> Transaction:
        """Any change (policies, labels, pods): a full compile, applied as a diff."""
        if self.ruleset is None:
            return self.start(state)
        return self._commit(state, self._compiler.compile(state, self.ruleset))

    def add_pod(self, state: ClusterState, pod: Pod) -> Transaction:
        """`state` = the one in force plus `pod`: compiled incrementally; releases a hold
        on the pod's address in the same transaction."""
        if self.ruleset is None:
            return self.start(state)
        return self._commit(state, self._compiler.add_pod(state, pod))

    def remove_pod(self, state: ClusterState, pod: Pod) -> Transaction:
        if self.ruleset is None:
            return self.start(state)
        return self._commit(state, self._compiler.remove_pod(state, pod))

    def _commit(self, state: ClusterState, compiled: Ruleset) -> Transaction:
        assert self.ruleset is not None
        programmed = {int(p.ip) for p in state.pods.values() if p.node == self.node}
        held = self._held - programmed
        ruleset = compiled.with_pending(held)
        document = diff_document(self.ruleset, ruleset, self.table)
        try:
            self.applier.apply(document)
        except Exception:
            # The kernel kept the old ruleset: the next change is compiled in full
            # (class numbers still taken from the ruleset in force).
            self._compiler = NodeCompiler(self.node)
            self._compiler.ruleset = self.ruleset
            raise
        self.ruleset, self._held = ruleset, held
        return _summary(document, full=False)

    def hold(self, address: ipaddress.IPv4Address) -> Transaction:
        """Drops all traffic of `address` until an update programs a local pod there."""
        if self.ruleset is None:
            raise RuntimeError("hold before start: the node has no ruleset yet")
        held = self._held | {int(address)}
        ruleset = self.ruleset.with_pending(held)
        document = diff_document(self.ruleset, ruleset, self.table)
        self.applier.apply(document)
        self.ruleset, self._held = ruleset, held
        return _summary(document, full=False)


def _summary(document: dict[str, object], full: bool) -> Transaction:
    commands = document.get("nftables")
    assert isinstance(commands, list)
    elements = sum(len(c[verb]["element"]["elem"]) for c in commands for verb in c
                   if isinstance(c[verb], dict) and "element" in c[verb])
    return Transaction(len(commands), elements, full)
