"""Where a DNS cluster's hosts come from under `--concurrency N`: one resolver per proxy.

Envoy resolves a STRICT_DNS or LOGICAL_DNS cluster on its main thread, on the cluster's
refresh schedule (dns_refresh_rate, the answer's TTL under respect_dns_ttl, the failure
back-off: proxy/upstream/dns_refresh.py) whatever the number of workers, and each resolution
reaches every worker's host set. Tulle's workers are processes, so (the roles of
proxy/upstream/health/workers.py):
- a single worker resolves: LOCAL_DNS;
- the leader resolves, and alone keeps the refresh timers (so TTLs are honoured once per
  proxy): LeaderResolutions sends each resolution that set a cluster's hosts (a
  Resolution: the cluster's name and, per endpoint name, the addresses it took, in order) to
  every follower;
- a follower never asks DNS: FollowerResolutions keeps the latest Resolution of each cluster
  name and hands it to that cluster (`start`), at once if it has one, then on each arrival;
  the follower's cluster warming waits for the first, as the leader's waits for its answer.
So a name is looked up once per refresh whatever N is, and every worker balances over the
same addresses (a DNS answer that rotates does not give each worker its own subset).

Ordering, the contract with proxy/server.py: the leader links its followers before it starts
any cluster, and forwards a CDS update after applying it, i.e. after the new clusters warmed
(resolved): a follower keeps the resolution of a cluster it does not have yet, and applies it
when the cluster starts. A resolution that changes no name's addresses (the same answer
again, a failure, an empty answer for LOGICAL_DNS) is not sent. Only the current cluster of
a name sends (a replaced cluster may still refresh until it stops); a removed one sends
`removed`, so followers forget it.

Sans-IO: reports come in and go out as values (`apply`, `send`); the resolving is the
cluster's (proxy/upstream/cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Resolved = Mapping[str, Sequence[str]]   # endpoint name -> the addresses it resolved to


@dataclass(frozen=True, slots=True)
class Resolution:
    cluster: str
    resolved: Resolved = field(default_factory=dict)
    removed: bool = False   # the leader has no such cluster any more


class DnsResolutions(Protocol):
    @property
    def resolves(self) -> bool:
        """Whether this worker asks DNS itself."""
        ...

    def start(self, cluster: str, owner: object, apply: Callable[[Resolved], None]) -> None:
        """`owner` (a cluster) now serves the name; `apply` takes resolutions made elsewhere."""
        ...

    def resolved(self, cluster: str, owner: object, resolved: Resolved) -> None:
        """`owner` resolved its endpoints and set its hosts."""
        ...

    def stopped(self, cluster: str, owner: object) -> None:
        ...


class LocalResolutions:
    """The one worker resolves, and tells no one."""

    resolves = True

    def start(self, cluster: str, owner: object, apply: Callable[[Resolved], None]) -> None:
        pass

    def resolved(self, cluster: str, owner: object, resolved: Resolved) -> None:
        pass

    def stopped(self, cluster: str, owner: object) -> None:
        pass


LOCAL_DNS = LocalResolutions()


class LeaderResolutions:
    """The leader resolves, and `send`s each resolution of the current cluster of a name."""

    resolves = True

    def __init__(self, send: Callable[[Resolution], None]) -> None:
        self._send = send
        self._current: dict[str, object] = {}

    def start(self, cluster: str, owner: object, apply: Callable[[Resolved], None]) -> None:
        self._current[cluster] = owner

    def resolved(self, cluster: str, owner: object, resolved: Resolved) -> None:
        if self._current.get(cluster) is owner:
            self._send(Resolution(cluster, resolved))

    def stopped(self, cluster: str, owner: object) -> None:
        # A cluster replaced by CDS stops after its successor started: nothing is removed.
        if self._current.get(cluster) is owner:
            del self._current[cluster]
            self._send(Resolution(cluster, removed=True))


class FollowerResolutions:
    """A follower resolves nothing: its DNS clusters take the leader's resolutions."""

    resolves = False

    def __init__(self) -> None:
        self.kept: dict[str, Resolved] = {}
        self._current: dict[str, tuple[object, Callable[[Resolved], None]]] = {}

    def start(self, cluster: str, owner: object, apply: Callable[[Resolved], None]) -> None:
        self._current[cluster] = (owner, apply)   # a replaced cluster is simply superseded
        kept = self.kept.get(cluster)
        if kept is not None:
            apply(kept)

    def resolved(self, cluster: str, owner: object, resolved: Resolved) -> None:
        pass   # never resolves

    def stopped(self, cluster: str, owner: object) -> None:
        current = self._current.get(cluster)
        if current is not None and current[0] is owner:
            del self._current[cluster]

    def apply(self, report: Resolution) -> None:
        if report.removed:
            self.kept.pop(report.cluster, None)
            return
        self.kept[report.cluster] = report.resolved
        current = self._current.get(report.cluster)
        if current is not None:
            current[1](report.resolved)
