"""The xDS protocol state of one ADS stream: subscriptions, versions, nonces, ACK/NACK.

Sans-IO: the shell feeds requests (the xDS request messages) and new resource sets, with
the time, and gets back `Push`es to encode and send. Both protocol variants share one
per-type record, `TypeState`; they differ only in how requests are read.

Theory of operation, per type URL on a stream:
- `names`/`wildcard` is what the client subscribes to. State-of-the-world (SotW) requests
  carry the full name list (empty on the first request means wildcard); delta requests
  carry changes (`resource_names_subscribe`/`_unsubscribe`, `*` meaning wildcard, an empty
  first subscribe meaning legacy wildcard).
- `sent` is name → version of what the client holds if it accepts everything in flight;
  pushes carry exactly the subscribed resources whose version differs from `sent`, plus
  (delta) the names it holds that no longer exist. `acked` is what it held at its last ACK.
- Every push gets a fresh nonce and is kept `in_flight` until the client answers it. An
  ACK (request with that nonce, no error_detail) folds the push, and any older one, into
  `acked`. A NACK (error_detail set) records the error, and the client keeps its last good
  resources: `sent` is rebuilt from `acked` plus what is still in flight, so the next
  change re-sends whatever the client is missing — but the rejected push is not retried
  by itself (that would loop); only a new change or subscription triggers a push.
- SotW: a request whose nonce is not the latest sent for its type is stale (the client
  has not seen the newest push yet): it may acknowledge, but its name list is ignored, as
  the xDS spec prescribes; the client repeats it when it answers the newest push.
- SotW Listener and Cluster responses are the full set (omission deletes), so any change
  among them re-sends all; for Route, Endpoint and Tulle types a push carries only what
  changed (omission deletes nothing), so one endpoint change sends one assignment.
- The first request for a type is always answered, even with an empty set, so a client
  can finish initialising.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from envoy.service.discovery.v3 import discovery_pb2

from control.xds.held_versions import HeldVersions
from control.xds.resources import FULL_STATE_TYPES, PUSH_ORDER, Resource, ResourceSet


class Variant(Enum):
    SOTW = "sotw"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class Push:
    type_url: str
    nonce: str
    version_info: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    nonce: str
    version_info: str  # the version the client rejected
    message: str
    at: float


@dataclass(slots=True)
class _InFlight:
    seq: int
    nonce: str
    version_info: str
    changes: dict[str, str | None]  # name → version sent, None when removed
    sent_at: float


@dataclass(slots=True)
class TypeState:
    type_url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    sent: HeldVersions = field(default_factory=HeldVersions)
    acked: HeldVersions = field(default_factory=HeldVersions)
    in_flight: list[_InFlight] = field(default_factory=list)
    responded: bool = False
    acked_version: str = ""
    acked_at: float | None = None
    last_nonce: str = ""
    last_seq: int = 0
    last_nack: Nack | None = None
    # Names of a NACKed push: the client may lack them although they did not change since,
    # so the next new resource set reconsiders them.
    resync: set[str] = field(default_factory=set)
    acks: int = 0
    nacks: int = 0

    def subscribed(self, name: str) -> bool:
        return self.wildcard or name in self.names


@dataclass(frozen=True, slots=True)
class TypeStatus:
    type_url: str
    acked_version: str
    sent_version: str
    pending: int
    last_nack: Nack | None
    subscribed: int  # -1 for wildcard
    acked_at: float | None


class XdsStream:
    """One ADS stream's protocol state. Feed it with `on_sotw_request`/`on_delta_request`
    (one variant per stream) and `on_resources`; send what they return, in order."""

    def __init__(self, variant: Variant, node_id: str = "", nonce_prefix: str = "") -> None:
        self.variant = variant
        self.node_id = node_id
        # Nonces are `<prefix><n>`; a per-stream prefix tells our nonces from those a
        # reconnecting client carries over from another stream or replica.
        self.nonce_prefix = nonce_prefix
        self.types: dict[str, TypeState] = {}
        self.resources: ResourceSet | None = None
        self._nonces = 0

    # -- requests --------------------------------------------------------------------

    def on_sotw_request(self, req: discovery_pb2.DiscoveryRequest, now: float) -> list[Push]:
        assert self.variant is Variant.SOTW
        type_url = req.type_url
        state = self.types.get(type_url)
        nonce = req.response_nonce
        seq = self._seq(state, nonce)
        if state is None or seq is None:
            # First request for the type, or a reconnect carrying another server's nonce.
            state = TypeState(type_url, wildcard=not req.resource_names or "*" in req.resource_names)
            state.names = set(map(sys.intern, req.resource_names)) - {"*"}
            self.types[type_url] = state
            return self._answer(state, None, now, force=True)
        if req.HasField("error_detail"):
            self._nack(state, seq, req.error_detail.message, now)
        else:
            self._ack(state, seq, now)
        if seq != state.last_seq:
            return []  # stale: the client has not seen our newest push yet
        new_names = set(map(sys.intern, req.resource_names)) - {"*"}
        wildcard = state.wildcard if not req.resource_names else "*" in req.resource_names
        added = new_names - state.names
        for gone in state.names - new_names:
            state.sent.pop(gone, None)
            state.acked.pop(gone, None)
        state.names, state.wildcard = new_names, wildcard
        if not added:
            return []
        return self._answer(state, added, now, force=False)

    def on_delta_request(self, req: discovery_pb2.DeltaDiscoveryRequest, now: float) -> list[Push]:
        assert self.variant is Variant.DELTA
        type_url = req.type_url
        state = self.types.get(type_url)
        first = state is None
        if state is None:
            state = TypeState(type_url)
            state.sent = HeldVersions(req.initial_resource_versions)
            state.acked = state.sent.copy()
            # Legacy wildcard: a first request that names nothing asks for everything.
            state.wildcard = not req.resource_names_subscribe
            self.types[type_url] = state
        seq = self._seq(state, req.response_nonce)
        if seq is not None:
            if req.HasField("error_detail"):
                self._nack(state, seq, req.error_detail.message, now)
            else:
                self._ack(state, seq, now)
        added: set[str] = set()
        for name in map(sys.intern, req.resource_names_subscribe):
            # Interned: a thousand streams subscribing to the same names share them.
            if name == "*":
                state.wildcard = True
                added.add("*")
            elif name not in state.names:
                state.names.add(name)
                added.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
                continue
            state.names.discard(name)
            if not state.wildcard:
                state.sent.pop(name, None)
                state.acked.pop(name, None)
        if first:
            return self._answer(state, None, now, force=True)
        if not added:
            return []
        return self._answer(state, None if "*" in added else added, now, force=False)

    # -- resources -------------------------------------------------------------------

    def on_resources(self, resources: ResourceSet, now: float) -> list[Push]:
        """A new resource set for this node: push what each subscribed type now lacks."""
        older, self.resources = self.resources, resources
        changes = resources.changes_since(older) if older is not None else None
        pushes: list[Push] = []
        for type_url in _ordered(self.types):
            state = self.types[type_url]
            if not state.responded:
                pushes.extend(self._answer(state, None, now, force=True))
            elif changes is None:
                pushes.extend(self._answer(state, None, now, force=False))
            elif type_url in changes or state.resync:
                candidates = changes.get(type_url, frozenset()) | state.resync
                state.resync = set()
                pushes.extend(self._answer(state, candidates, now, force=False))
        return pushes

    # -- status ----------------------------------------------------------------------

    def status(self) -> list[TypeStatus]:
        out = []
        for type_url in _ordered(self.types):
            s = self.types[type_url]
            out.append(
                TypeStatus(
                    type_url=type_url,
                    acked_version=s.acked_version,
                    sent_version=s.in_flight[-1].version_info if s.in_flight else s.acked_version,
                    pending=len(s.in_flight),
                    last_nack=s.last_nack,
                    subscribed=-1 if s.wildcard else len(s.names),
                    acked_at=s.acked_at,
                )
            )
        return out

    # -- internals -------------------------------------------------------------------

    def _answer(
        self, state: TypeState, candidates: Iterable[str] | None, now: float, *, force: bool
    ) -> list[Push]:
        """Build the push for `state` considering `candidates` (None: every name)."""
        if self.resources is None:
            return []
        current = self.resources.get(state.type_url)
        version = self.resources.version(state.type_url)
        names = current.keys() if candidates is None else candidates
        changed = [
            r
            for n in names
            if (r := current.get(n)) is not None and state.subscribed(n) and state.sent.get(n) != r.version
        ]
        removed: list[str] = []
        if self.variant is Variant.DELTA:
            gone = state.sent.keys() if candidates is None else candidates
            removed = [n for n in gone if n not in current and n in state.sent]
        elif state.type_url in FULL_STATE_TYPES:
            stale = [n for n in state.sent if n not in current]
            if changed or stale or force:
                changed = [r for n, r in current.items() if state.subscribed(n)]
                removed = stale
        if not (changed or removed or force):
            return []
        changed.sort(key=lambda r: r.name)
        changes: dict[str, str | None] = {r.name: r.version for r in changed}
        changes.update(dict.fromkeys(removed))
        self._nonces += 1
        nonce = f"{self.nonce_prefix}{self._nonces}"
        state.in_flight.append(_InFlight(self._nonces, nonce, version, changes, now))
        state.sent.apply(changes)
        state.sent.rebase(current)
        state.responded = True
        state.last_nonce, state.last_seq = nonce, self._nonces
        return [Push(state.type_url, nonce, version, tuple(changed), tuple(sorted(removed)))]

    def _seq(self, state: TypeState | None, nonce: str) -> int | None:
        """The sequence number of one of our nonces for this type, else None."""
        if state is None or not nonce.startswith(self.nonce_prefix):
            return None
        rest = nonce[len(self.nonce_prefix) :]
        if not rest.isdigit() or not 0 < int(rest) <= state.last_seq:
            return None
        return int(rest)

    def _ack(self, state: TypeState, seq: int, now: float) -> None:
        # An ACK of a push also accepts every older push still in flight.
        while state.in_flight and state.in_flight[0].seq <= seq:
            flight = state.in_flight.pop(0)
            state.acked.apply(flight.changes)
            state.acked_version = flight.version_info
        if self.resources is not None:
            state.acked.rebase(self.resources.get(state.type_url))
        state.acked_at = now
        state.acks += 1

    def _nack(self, state: TypeState, seq: int, message: str, now: float) -> None:
        rejected = ""
        while state.in_flight and state.in_flight[0].seq <= seq:
            flight = state.in_flight.pop(0)
            if flight.seq == seq:
                rejected = flight.version_info
                state.resync.update(flight.changes)
                break
            state.acked.apply(flight.changes)
            state.acked_version = flight.version_info
        state.last_nack = Nack(f"{self.nonce_prefix}{seq}", rejected, message, now)
        state.nacks += 1
        state.sent = state.acked.copy()
        for flight in state.in_flight:
            state.sent.apply(flight.changes)


def _ordered(type_urls: Iterable[str]) -> list[str]:
    rank = {t: i for i, t in enumerate(PUSH_ORDER)}
    return sorted(type_urls, key=lambda t: (rank.get(t, len(rank)), t))
