"""Counters and gauges under Envoy's stat names, and the two admin renderings of them.

Rules: names are Envoy's (`cluster.NAME.upstream_rq_total`, `http.PREFIX.downstream_rq_2xx`,
`listener.ADDRESS.downstream_cx_total`, `tcp.PREFIX.downstream_cx_total`...), so dashboards
carry over. Each scope is a slotted dataclass whose fields are its stats: the request path
bumps attributes (the cheapest thing Python can do), and the admin walks the fields and
the scope's `derived()` stats (those that follow from others, computed when read rather
than counted per request). Stats listed in a scope's GAUGES are gauges, the others counters.
A cluster's responses are counted by status code in a table (ClusterStats.count_status) and
rendered as Envoy's dynamic stats: `upstream_rq_<code>`, `upstream_rq_<class>xx` and their
`external.`/`internal.` twins exist once a response of that code or class was charged, as in
Envoy; `upstream_rq_completed` always. The text format is Envoy's `/stats` (`name: value`,
sorted); the Prometheus one is Envoy's `/stats/prometheus` (`envoy_` prefix, the scope's name
as a tag, `# TYPE` lines), with Envoy's response code tags: `cluster.a.upstream_rq_200` is
`envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="a"}`, and
`http.p.downstream_rq_2xx` is `envoy_http_downstream_rq_xx{envoy_response_code_class="2",...}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import TypeVar

# A cluster's responses by status code, one table per origin of the request: the count of a
# code is the table's entry at that index (codes outside 0..999 do not parse), so counting a
# response is one index and add. A table is made at a cluster's first response of its origin
# (IndexError on the empty one), so idle clusters cost nothing.
CODE_TABLE_SIZE = 1000


@dataclass(slots=True)
class ClusterStats:
    GAUGES = frozenset({"upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
                        "membership_healthy", "membership_total", "membership_degraded",
                        "membership_excluded", "outlier_detection.ejections_active"})
    upstream_rq_total: int = 0   # requests sent on a connection (not those whose connect failed)
    upstream_rq_retry: int = 0
    upstream_rq_retry_success: int = 0
    upstream_rq_retry_limit_exceeded: int = 0   # a retriable outcome after the last retry allowed
    upstream_rq_retry_backoff_exponential: int = 0
    upstream_rq_pending_total: int = 0   # requests that found no idle connection and waited for one
    upstream_rq_pending_failure_eject: int = 0   # ... and whose connection then failed
    upstream_rq_timeout: int = 0
    upstream_rq_per_try_timeout: int = 0
    upstream_rq_per_try_idle_timeout: int = 0
    upstream_rq_max_duration_reached: int = 0
    upstream_rq_rx_reset: int = 0
    upstream_rq_tx_reset: int = 0
    upstream_cx_total: int = 0
    upstream_cx_http1_total: int = 0
    upstream_cx_connect_fail: int = 0
    upstream_cx_connect_timeout: int = 0
    upstream_cx_destroy: int = 0
    upstream_cx_destroy_local: int = 0    # ... closed by Tulle (or a connect that timed out)
    upstream_cx_destroy_remote: int = 0   # ... by the upstream (or a connect it refused)
    upstream_cx_none_healthy: int = 0
    upstream_cx_active: int = 0
    upstream_rq_active: int = 0
    upstream_rq_pending_active: int = 0
    membership_healthy: int = 0
    membership_total: int = 0
    membership_change: int = 0   # updates that added or removed hosts, one per priority level
    # responses by code (see CODE_TABLE_SIZE): of requests the connection manager marked
    # internal (x-envoy-internal: true), and of the others (Envoy's `internal.` and `external.`)
    internal_codes: list[int] = field(default_factory=list)
    external_codes: list[int] = field(default_factory=list)
    # bytes read and written by the cluster's closed connections (the open ones count their
    # own: Cluster.extra_stats adds them up as upstream_cx_rx/tx_bytes_total)
    closed_bytes: list[int] = field(default_factory=lambda: [0, 0])

    def count_status(self, status: int, internal: bool = False) -> None:
        """A response (the upstream's, or a local reply charged to the cluster) with `status`."""
        codes = self.internal_codes if internal else self.external_codes
        try:
            codes[status] += 1
        except IndexError:
            if not 0 <= status < CODE_TABLE_SIZE:
                return
            codes.extend([0] * CODE_TABLE_SIZE)
            codes[status] += 1

    def derived(self) -> dict[str, int]:
        # Envoy counts a request completed whenever it charges a response code to the cluster
        # (an upstream's answer, or the local 5xx of a reset or timeout), each code and class
        # once seen (`upstream_rq_200`, `upstream_rq_2xx`), in all and by origin
        # (`external.upstream_rq_200`...). Degraded and excluded hosts do not exist in Tulle's
        # host model (proxy/upstream/host.py), and no upstream codec acts on underscores in
        # headers (the cluster's headers_with_underscores_action is refused at load).
        stats = {"upstream_rq_completed": 0,
                 "membership_degraded": 0, "membership_excluded": 0,
                 "http1.dropped_headers_with_underscores": 0,
                 "http1.requests_rejected_with_underscores_in_headers": 0}
        for origin, codes in (("internal.", self.internal_codes), ("external.", self.external_codes)):
            if not codes:
                continue
            completed = 0
            for status, count in enumerate(codes):
                if count:
                    completed += count
                    klass = f"upstream_rq_{status // 100}xx" if 100 <= status < 600 else None
                    for prefix in (origin, ""):
                        for stat in (f"{prefix}upstream_rq_{status}", klass and f"{prefix}{klass}"):
                            if stat:
                                stats[stat] = stats.get(stat, 0) + count
            stats[f"{origin}upstream_rq_completed"] = completed
            stats["upstream_rq_completed"] += completed
        return stats


_NO_HTTP2_OR_HTTP3 = {f"downstream_{stat}": 0 for stat in (
    "cx_http2_total", "cx_http2_active", "cx_http3_total", "cx_http3_active", "rq_http2_total", "rq_http3_total")}


@dataclass(slots=True)
class HttpStats:
    GAUGES = frozenset({"downstream_rq_active", "downstream_cx_active", "downstream_cx_upgrades_active",
                        "downstream_cx_http1_active", "downstream_cx_http2_active", "downstream_cx_http3_active"})
    downstream_rq_total: int = 0
    downstream_rq_1xx: int = 0
    downstream_rq_2xx: int = 0
    downstream_rq_3xx: int = 0
    downstream_rq_4xx: int = 0
    downstream_rq_5xx: int = 0
    downstream_rq_completed: int = 0
    downstream_rq_timeout: int = 0
    downstream_rq_header_timeout: int = 0
    downstream_rq_idle_timeout: int = 0
    downstream_rq_max_duration_reached: int = 0
    downstream_cx_idle_timeout: int = 0
    downstream_cx_max_duration_reached: int = 0
    downstream_cx_delayed_close_timeout: int = 0
    downstream_rq_rx_reset: int = 0
    downstream_cx_total: int = 0
    downstream_cx_http1_total: int = 0
    downstream_cx_protocol_error: int = 0
    downstream_cx_destroy: int = 0
    downstream_cx_destroy_local: int = 0    # ... closed by Tulle
    downstream_cx_destroy_remote: int = 0   # ... by the client
    downstream_cx_active: int = 0
    downstream_cx_upgrades_total: int = 0    # upgrades (WebSocket, CONNECT) a route allowed
    downstream_cx_upgrades_active: int = 0   # ... whose stream has not ended
    no_route: int = 0
    rq_direct_response: int = 0
    rq_redirect: int = 0
    no_cluster: int = 0

    def count_status(self, status: int) -> None:
        klass = status // 100
        if klass == 2:
            self.downstream_rq_2xx += 1
        elif klass == 5:
            self.downstream_rq_5xx += 1
        elif klass == 4:
            self.downstream_rq_4xx += 1
        elif klass == 3:
            self.downstream_rq_3xx += 1
        else:
            self.downstream_rq_1xx += 1

    def derived(self) -> dict[str, int]:
        # Read, not counted per request: every connection and request is an HTTP/1 one (the
        # only downstream codec), and the active ones are those started and not completed.
        return {"downstream_rq_http1_total": self.downstream_rq_total,
                "downstream_cx_http1_active": self.downstream_cx_active,
                "downstream_rq_active": self.downstream_rq_total - self.downstream_rq_completed,
                **_NO_HTTP2_OR_HTTP3}


@dataclass(slots=True)
class Http1CodecStats:
    """Envoy's process-wide `http1.*` scope: what the downstream HTTP/1 codecs of every
    connection manager did with header names holding an underscore
    (`headers_with_underscores_action`): each header dropped, each request refused."""
    GAUGES = frozenset[str]()
    dropped_headers_with_underscores: int = 0
    requests_rejected_with_underscores_in_headers: int = 0

    def derived(self) -> dict[str, int]:
        return {}


@dataclass(slots=True)
class TcpProxyStats:
    GAUGES = frozenset({"downstream_cx_active"})
    downstream_cx_total: int = 0
    downstream_cx_rx_bytes_total: int = 0
    downstream_cx_tx_bytes_total: int = 0
    downstream_cx_no_route: int = 0
    upstream_flush_total: int = 0
    idle_timeout: int = 0
    downstream_cx_active: int = 0

    def derived(self) -> dict[str, int]:
        return {}


@dataclass(slots=True)
class ListenerStats:
    GAUGES = frozenset({"downstream_cx_active"})
    downstream_cx_total: int = 0
    downstream_cx_destroy: int = 0
    downstream_cx_active: int = 0
    no_filter_chain_match: int = 0
    downstream_listener_filter_error: int = 0
    downstream_pre_cx_timeout: int = 0

    def derived(self) -> dict[str, int]:
        return {}


# Gauges of what every worker holds alike — a cluster's hosts and their health (membership
# comes from the one xDS stream, health from the leader's checks), its circuit breakers' state
# (every worker computes it from the counts the workers share, proxy/upstream/shared_breaker.py):
# the proxy's value is the leader's, as Envoy's is its main thread's, not a sum over the workers.
# membership_change, the updates each worker applies alike, is the leader's too.
SAME_IN_EVERY_WORKER = frozenset({
    "membership_healthy", "membership_total", "membership_degraded", "membership_excluded",
    "membership_change",
    *(f"circuit_breakers.{priority}.{gauge}" for priority in ("default", "high")
      for gauge in ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open", "remaining_cx",
                    "remaining_pending", "remaining_rq", "remaining_retries", "remaining_cx_pools")),
})

Scope = ClusterStats | HttpStats | Http1CodecStats | TcpProxyStats | ListenerStats
S = TypeVar("S", ClusterStats, HttpStats, Http1CodecStats, TcpProxyStats, ListenerStats)
StatRow = tuple[str, str, str, str, str, int, bool]


class StatsStore:
    """Every scope of the process, by Envoy's prefix (`cluster.a`, `http.ingress`...)."""

    def __init__(self) -> None:
        self.scopes: dict[str, tuple[str, str, str, Scope]] = {}
        self.server_gauges: dict[str, int] = {}
        self.extras: dict[str, list[Callable[[], dict[str, int]]]] = {}
        # --concurrency: the other workers' latest stats, by worker (proxy/worker_link.py)
        self.followers: dict[int, list[StatRow]] = {}

    def register(self, kind: str, name: str, scope: Scope,
                 extra: Callable[[], dict[str, int]] | None = None) -> None:
        """kind: cluster | http | tcp | listener, or http1 (one scope, no name); name: the
        cluster name, stat_prefix or address; `extra` yields more stats of the scope kept
        elsewhere (circuit breaker, outlier detection)."""
        prefix = f"{kind}.{name}" if name else kind
        self.scopes[prefix] = (kind, name, _TAG[kind], scope)
        self.extras[prefix] = [extra] if extra is not None else []

    def share(self, kind: str, name: str, scope: S, extra: Callable[[], dict[str, int]] | None = None) -> S:
        """Like register, for filters: one whose name is already registered counts into
        the scope registered first, which is returned (Envoy's stats are by name, so two
        filter chains with one stat_prefix, e.g. a port's mTLS and plaintext chains, add
        up); their `extra` values add up too."""
        key = f"{kind}.{name}" if name else kind
        current = self.scopes.get(key)
        if current is None or type(current[3]) is not type(scope):
            self.register(kind, name, scope, extra)
            return scope
        if extra is not None:
            self.extras[key].append(extra)
        existing: S = current[3]
        return existing

    def values(self) -> Iterator[StatRow]:
        """(full name, kind, scope name, tag, stat, value, is_gauge) for every stat, summed
        over the workers of the process (Envoy's view: counters and gauges are totals), but
        for SAME_IN_EVERY_WORKER, the leader's."""
        if not self.followers:
            yield from self.own_values()
            return
        totals: dict[str, StatRow] = {row[0]: row for row in self.own_values()}
        for rows in self.followers.values():
            for row in rows:
                mine = totals.get(row[0])
                if mine is None:
                    totals[row[0]] = row
                elif row[4] not in SAME_IN_EVERY_WORKER:
                    totals[row[0]] = (*mine[:5], mine[5] + row[5], mine[6])
        yield from totals.values()

    def own_values(self) -> Iterator[StatRow]:
        """values() of this worker alone."""
        for prefix, (kind, name, tag, scope) in self.scopes.items():
            gauges = scope.GAUGES
            for member in fields(scope):
                stat = member.name
                value = getattr(scope, stat)
                if type(value) is int:   # (not the code tables: derived() renders them)
                    yield (f"{prefix}.{stat}", kind, name, tag, stat, value, stat in gauges)
            for stat, value in scope.derived().items():
                yield (f"{prefix}.{stat}", kind, name, tag, stat, value, stat in gauges)
            extras: dict[str, int] = {}
            for extra in self.extras.get(prefix, ()):
                for stat, value in extra().items():
                    extras[stat] = extras.get(stat, 0) + value
            for stat, value in extras.items():
                yield (f"{prefix}.{stat}", kind, name, tag, stat, value, _is_gauge(stat))
        for stat, value in self.server_gauges.items():
            yield (f"server.{stat}", "server", "", "", stat, value, True)

    def render_text(self, filter_text: str | None = None) -> str:
        lines = sorted(f"{name}: {value}" for name, *_, value, _ in self.values()
                       if filter_text is None or filter_text in name)
        return "\n".join(lines) + "\n"

    def render_prometheus(self) -> str:
        by_metric: dict[str, list[str]] = {}
        types: dict[str, str] = {}
        for _, kind, name, tag, stat, value, gauge in self.values():
            labels = f'{tag}="{name}"' if tag else ""
            code = _RESPONSE_CODE.search(stat)
            if code is not None:   # Envoy's tag extraction: the code (or class) becomes a label
                number, klass = code.groups()
                stat = stat[:code.start()] + ("_rq" if number else "_rq_xx")
                code_label = (f'envoy_response_code="{number}"' if number
                              else f'envoy_response_code_class="{klass}"')
                labels = f"{code_label},{labels}" if labels else code_label
            metric = f"envoy_{kind}_{stat}".replace(".", "_")
            types[metric] = "gauge" if gauge else "counter"
            by_metric.setdefault(metric, []).append(f"{metric}{{{labels}}} {value}" if labels
                                                    else f"{metric} {value}")
        out = []
        for metric in sorted(by_metric):
            out.append(f"# TYPE {metric} {types[metric]}")
            out.extend(by_metric[metric])
        return "\n".join(out) + "\n"


# `..._rq_200` and `..._rq_2xx` (Envoy's envoy_response_code and envoy_response_code_class tags)
_RESPONSE_CODE = re.compile(r"_rq_(?:(\d{3})|([1-5])xx)$")


def _is_gauge(stat: str) -> bool:
    return (stat.endswith("_open") or ".remaining_" in stat or stat.endswith("ejections_active")
            or stat in ("health_check.healthy", "health_check.degraded", "version", "warming_state"))


_TAG = {"cluster": "envoy_cluster_name", "http": "envoy_http_conn_manager_prefix",
        "tcp": "envoy_tcp_prefix", "listener": "envoy_listener_address", "http1": "", "server": ""}
