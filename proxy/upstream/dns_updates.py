"""A DNS cluster's update stats (Envoy's `cluster.NAME.update_*`), sans-IO.

Rules (Envoy 1.40's strict_dns_cluster.cc and logical_dns_cluster.cc, and its /stats):
- Envoy resolves each endpoint of a STRICT_DNS cluster on its own (a "resolve target" per
  endpoint, even when two endpoints name the same host); Tulle resolves each distinct name
  once and hands the answer to every endpoint naming it, so each event below counts once
  per such endpoint: the same values as Envoy's for the same DNS traffic.
- update_attempt: a resolution starts.
- update_success: it ends with an answer — for STRICT_DNS any answer, an empty one too; for
  LOGICAL_DNS only one with addresses. update_failure: it ends otherwise (timeout, SERVFAIL,
  refused, no such name; LOGICAL_DNS: no addresses).
- update_no_rebuild: a success that leaves the hosts as they were. STRICT_DNS compares the
  set of addresses with the endpoint's previous one (an order change rebuilds nothing; a first
  answer that is empty rebuilds nothing either: no hosts before, none after); LOGICAL_DNS
  compares the whole address list, in order, though only its first address is the host (and
  a first answer always rebuilds: it makes the logical host).
- update_empty counts empty EDS assignments, never a DNS answer; with assignment_stale,
  assignment_timeout_received, assignment_use_cached, version and warming_state (gauges) it is
  shown, and 0, for every cluster that is not EDS, as Envoy shows them.

Theory of operation: the cluster's I/O shell (proxy/upstream/cluster.py) calls `attempted`
when it asks the resolver, then `failed`, or `answered` with the addresses (deduplicated,
in the answer's order), which says whether the hosts must be rebuilt. Under --concurrency
only the leader resolves, so a follower's counters stay 0 and the proxy's (the sum over the
workers, proxy/stats.py) are the leader's, as health_check.* are.
"""

from __future__ import annotations

from collections.abc import Sequence

# shown as 0 for every STATIC, STRICT_DNS and LOGICAL_DNS cluster (Envoy's EDS-only stats)
_ALWAYS_ZERO = {"update_empty": 0, "assignment_stale": 0, "assignment_timeout_received": 0,
                "assignment_use_cached": 0, "version": 0, "warming_state": 0}


class DnsUpdates:
    """One cluster's update counters, and each name's previous answer (to tell a rebuild)."""

    def __init__(self, logical: bool) -> None:
        self.logical = logical
        self.attempt = 0
        self.success = 0
        self.failure = 0
        self.no_rebuild = 0
        self._previous: dict[str, list[str]] = {}

    def attempted(self, endpoints: int = 1) -> None:
        """A resolution of a name that `endpoints` endpoints of the cluster name starts."""
        self.attempt += endpoints

    def failed(self, endpoints: int = 1) -> None:
        """It ended without an answer (for LOGICAL_DNS: without an address)."""
        self.failure += endpoints

    def answered(self, name: str, addresses: Sequence[str], endpoints: int = 1) -> bool:
        """It ended with `addresses` (no duplicates): whether the hosts change."""
        self.success += endpoints
        previous = self._previous.get(name)
        if self.logical:
            rebuild = previous is None or previous != list(addresses)
        else:
            rebuild = set(previous or ()) != set(addresses)
        if rebuild:
            self._previous[name] = list(addresses)
        else:
            self.no_rebuild += endpoints
        return rebuild

    def as_dict(self) -> dict[str, int]:
        stats = {"update_attempt": self.attempt, "update_success": self.success,
                 "update_failure": self.failure, "update_no_rebuild": self.no_rebuild}
        stats.update(_ALWAYS_ZERO)
        return stats
