"""Envoy's admin `/clusters` text format, read back (the inverse of `endpoints._clusters`, and
of a real Envoy's `/clusters`), for whoever reads a sidecar's hosts and their health.

Rules (Envoy's admin, source/server/admin/clusters_handler.cc): one fact per line, its parts
joined by `::`. A cluster-wide line is `CLUSTER::KEY::VALUE` for the keys in CLUSTER_KEYS
(`added_via_api`, `observability_name`) or `CLUSTER::GROUP::KEY::VALUE` for the groups
(`default_priority`, `high_priority`, `outlier`); every other line is a host's,
`CLUSTER::ADDRESS::STAT::VALUE`. An IPv6 address holds `::` itself (`[fd00::1]:80`), so a
host line is split at the first `::` (cluster names hold none) and at the last `::STAT::`
where STAT is a lower-case name; a value may be empty (`hostname::`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CLUSTER_KEYS = frozenset({"added_via_api", "observability_name", "eds_service_name"})
CLUSTER_GROUPS = frozenset({"default_priority", "high_priority", "outlier"})
_HOST_LINE = re.compile(r"(?P<host>\[[^\]]*\](?::\d+)?|.+?)::(?P<stat>[a-z_]+)::(?P<value>.*)")


class ClustersTextError(ValueError):
    """A `/clusters` page that is not in Envoy's text format; the message names the line."""


@dataclass(slots=True)
class ClusterStatus:
    """One cluster of a `/clusters` page. `settings`: the cluster-wide lines, keyed as
    written (`default_priority::max_connections`, `outlier::success_rate_average`,
    `added_via_api`); `hosts`: each host's stats, by address, in the page's order."""

    settings: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, dict[str, str]] = field(default_factory=dict)

    def healthy_hosts(self) -> list[str]:
        """The addresses whose `health_flags` is `healthy` (no failed check of any kind)."""
        return [address for address, stats in self.hosts.items() if stats.get("health_flags") == "healthy"]


def parse_clusters(text: str) -> dict[str, ClusterStatus]:
    """Reads a `/clusters` text page: every cluster, by name, in the page's order."""
    clusters: dict[str, ClusterStatus] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        name, sep, rest = line.partition("::")
        if not sep or not name:
            raise ClustersTextError(f"line {number}: {line[:200]!r} is not `CLUSTER::...`")
        cluster = clusters.setdefault(name, ClusterStatus())
        key, sep, value = rest.partition("::")
        if key in CLUSTER_KEYS and sep:
            cluster.settings[key] = value
            continue
        if key in CLUSTER_GROUPS:
            setting, sep, value = value.partition("::")
            if not sep:
                raise ClustersTextError(f"line {number}: {line[:200]!r} is not `CLUSTER::{key}::KEY::VALUE`")
            cluster.settings[f"{key}::{setting}"] = value
            continue
        host = _HOST_LINE.fullmatch(rest)
        if host is None:
            raise ClustersTextError(f"line {number}: {line[:200]!r} is neither a cluster setting "
                                    "nor `CLUSTER::ADDRESS::STAT::VALUE`")
        cluster.hosts.setdefault(host["host"], {})[host["stat"]] = host["value"]
    return clusters
