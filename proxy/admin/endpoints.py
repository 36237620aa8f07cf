"""The admin endpoints, as functions of the running proxy's state (no I/O here).

Rules (Envoy's admin API): `/ready` is 503 "INITIALIZING" until the first xDS listeners and
their routes are in place (and under --concurrency until every worker has bound its listeners,
as Envoy's workers have theirs before it is live), then 200 "LIVE" while serving, 503 "DRAINING" after
`/healthcheck/fail` (until `/healthcheck/ok`); `/stats` is Envoy's text format (with
`?filter=REGEX`), `/stats/prometheus` the Prometheus one; `/clusters` lists each cluster's
thresholds (with outlier detection, the last interval's success-rate average and ejection
threshold) and each host's counters, health and success rate (-1 unless the outlier
detector's last interval computed one) in Envoy's `name::host::stat::value` lines
(under `--concurrency N` the counters and gauges of every worker added up: each follower
sends its HostRows, the leader adds them to its own);
`/config_dump` the bootstrap and what xDS delivered (active clusters, listeners, routes,
secrets with private keys redacted) as JSON; `/server_info` version, state, uptime and node;
`/quitquitquit`, `/healthcheck/fail` and `/healthcheck/ok` need POST (405 otherwise).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from google.protobuf import json_format
from google.protobuf.message import Message

from proxy.bootstrap import BootstrapConfig
from proxy.stats import StatsStore
from proxy.tls.secrets import CertificateSecret, SecretStore, TrustBundle
from proxy.upstream.circuit_breaker import CircuitBreakerThresholds
from proxy.upstream.cluster import Cluster
from proxy.upstream.host import Host

VERSION = "tulle-proxy/0.1.0/HTTP1"


@dataclass
class AdminState:
    config: BootstrapConfig
    stats: StatsStore
    clusters: dict[str, Cluster]
    started: float = field(default_factory=time.time)
    health_check_failed: bool = False
    initializing: bool = False  # until the first xDS listeners (and their routes) are in place
    starting: int = 0  # --concurrency: followers that have not yet bound their listeners
    secrets: SecretStore | None = None
    quit: Callable[[], None] = lambda: None
    # /healthcheck/fail and /healthcheck/ok: listeners with drain_type DEFAULT drain meanwhile
    health_changed: Callable[[bool], None] = lambda failed: None
    options: dict[str, object] = field(default_factory=dict)
    # what xDS delivered: {"clusters"|"listeners"|"routes": {name: proto message}}
    dynamic: Callable[[], dict[str, dict[str, Message]]] = lambda: {}
    # --concurrency: each follower's latest per-host snapshot, by worker (proxy/worker_link.py)
    follower_hosts: dict[int, list[HostRow]] = field(default_factory=dict)


# One host of one cluster in one worker: (cluster, host key, {field: value}); the numeric
# fields in SUMMED add up across workers, the others are the host's description.
HostRow = tuple[str, str, dict[str, object]]
SUMMED = ("cx_active", "cx_connect_fail", "cx_total", "rq_active", "rq_error", "rq_pending_active",
          "rq_success", "rq_timeout", "rq_total")
_DESCRIBED = ("hostname", "health_flags", "weight", "region", "zone", "sub_zone", "canary", "priority",
              "success_rate", "local_origin_success_rate")


def host_rows(clusters: dict[str, Cluster]) -> list[HostRow]:
    """Every host's /clusters fields in this worker, in Envoy's order."""
    rows: list[HostRow] = []
    for name, cluster in clusters.items():
        for host in cluster.host_set.hosts:
            pool = cluster.pools.get(host)
            rows.append((name, host.key, {
                "cx_active": pool.open if pool else 0, "cx_connect_fail": host.cx_connect_fail,
                "cx_total": host.cx_total, "rq_active": host.active_requests, "rq_error": host.rq_error,
                "rq_pending_active": pool.pending if pool else 0, "rq_success": host.rq_success,
                "rq_timeout": host.rq_timeout,
                "rq_total": host.rq_total,
                "hostname": cluster.hostnames.get(host, ""), "health_flags": host.health_flags(),
                "weight": host.weight, "region": "", "zone": "", "sub_zone": "", "canary": "false",
                "priority": host.locality_priority,
                "success_rate": _rate(cluster, host, local=False),
                "local_origin_success_rate": _rate(cluster, host, local=True)}))
    return rows


def _rate(cluster: Cluster, host: Host, local: bool) -> str:
    """The outlier detector's success rate of the host; -1 without outlier detection."""
    return _double(cluster.outlier.success_rate(host, local) if cluster.outlier is not None else -1.0)


def _double(value: float) -> str:
    """As Envoy prints a double: the shortest text that reads back ("-1", "100", "97.5")."""
    return str(int(value)) if value.is_integer() else repr(value)


Reply = tuple[int, str, bytes]
TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"


def handle(state: AdminState, method: str, target: str) -> Reply:
    path, _, query = target.partition("?")
    params = {key: values[-1] for key, values in parse_qs(query).items()}
    if path in _MUTATING:
        if method != "POST":
            return 405, TEXT, b"This endpoint needs to be accessed with POST.\n"
        return _MUTATING[path](state)
    handler = _READ.get(path)
    if handler is None:
        return 404, TEXT, b"invalid path. admin commands are:\n" + "".join(
            f"  {name}\n" for name in sorted({*_READ, *_MUTATING})).encode()
    return handler(state, params)


def _ready(state: AdminState, params: dict[str, str]) -> Reply:
    if state.health_check_failed:
        return 503, TEXT, b"DRAINING\n"
    if state.initializing or state.starting:
        return 503, TEXT, b"INITIALIZING\n"
    return 200, TEXT, b"LIVE\n"


def _stats(state: AdminState, params: dict[str, str]) -> Reply:
    pattern = params.get("filter")
    if params.get("format") == "prometheus":
        return _prometheus(state, params)
    if params.get("format") == "json":
        regex = re.compile(pattern) if pattern else None
        stats = [{"name": name, "value": value} for name, *_, value, _ in state.stats.values()
                 if regex is None or regex.search(name)]
        return 200, JSON, json.dumps({"stats": stats}).encode()
    text = state.stats.render_text()
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            return 400, TEXT, f"Invalid regex: {error}\n".encode()
        text = "".join(line + "\n" for line in text.splitlines() if regex.search(line.split(":")[0]))
    return 200, TEXT, text.encode()


def _prometheus(state: AdminState, params: dict[str, str]) -> Reply:
    return 200, "text/plain; charset=UTF-8", state.stats.render_prometheus().encode()


def merge_hosts(own: list[HostRow], others: list[list[HostRow]]) -> dict[str, dict[str, dict[str, object]]]:
    """Per cluster, per host: this worker's fields with the other workers' counters and
    gauges added (a host only another worker has, e.g. an ORIGINAL_DST one, is listed too)."""
    merged: dict[str, dict[str, dict[str, object]]] = {}
    for cluster, host, values in own:
        merged.setdefault(cluster, {})[host] = dict(values)
    for rows in others:
        for cluster, host, values in rows:
            hosts = merged.setdefault(cluster, {})
            mine = hosts.get(host)
            if mine is None:
                hosts[host] = dict(values)
                continue
            for key in SUMMED:
                mine[key] = int(mine.get(key, 0)) + int(values.get(key, 0))  # type: ignore[call-overload]
    return merged


def _clusters(state: AdminState, params: dict[str, str]) -> Reply:
    hosts = merge_hosts(host_rows(state.clusters), list(state.follower_hosts.values()))
    dynamic = state.dynamic().get("clusters", {})
    lines = []
    for name, cluster in state.clusters.items():
        lines.append(f"{name}::observability_name::{name}")
        if cluster.outlier is not None:
            outlier = cluster.outlier
            for prefix, local in (("", False), ("local_origin_", True)):
                lines.append(f"{name}::outlier::{prefix}success_rate_average::"
                             f"{_double(outlier.success_rate_average[local])}")
                lines.append(f"{name}::outlier::{prefix}success_rate_ejection_threshold::"
                             f"{_double(outlier.success_rate_ejection_threshold[local])}")
        proto = cluster.config.proto
        high = CircuitBreakerThresholds.from_proto(
            proto.circuit_breakers if proto is not None and proto.HasField("circuit_breakers") else None, 1)
        for priority, thresholds in (("default_priority", cluster.breaker.thresholds), ("high_priority", high)):
            for threshold in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
                lines.append(f"{name}::{priority}::{threshold}::{getattr(thresholds, threshold)}")
        lines.append(f"{name}::added_via_api::{'true' if name in dynamic else 'false'}")
        for key, values in hosts.get(name, {}).items():
            for field_name in (*SUMMED, *_DESCRIBED):
                lines.append(f"{name}::{key}::{field_name}::{values.get(field_name, '')}")
    return 200, TEXT, ("\n".join(lines) + "\n").encode()


def _as_json(message: Message) -> dict[str, Any]:
    """Envoy's admin pages name fields as the protos do (snake_case), not proto3 JSON's camelCase."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _typed(message: Message) -> dict[str, object]:
    return {"@type": "type.googleapis.com/" + message.DESCRIPTOR.full_name, **_as_json(message)}


def _config_dump(state: AdminState, params: dict[str, str]) -> Reply:
    """Envoy's sections: static resources from the bootstrap, dynamic ones as xDS delivered
    them (under --concurrency the leader's, which every worker applied in the same order);
    `?resource=NAME` lists the entries of that section only, as Envoy does."""
    bootstrap = state.config.proto
    dynamic = state.dynamic()
    static = bootstrap.static_resources if bootstrap is not None else None

    def entries(kind: str, key: str) -> list[dict[str, object]]:
        return [{key: _typed(message)} for _, message in sorted(dynamic.get(kind, {}).items())]

    dump: dict[str, list[dict[str, Any]]] = {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
         "bootstrap": _as_json(bootstrap) if bootstrap is not None else {}},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "static_clusters": [{"cluster": _typed(cluster)} for cluster in (static.clusters if static else ())],
         "dynamic_active_clusters": entries("clusters", "cluster")},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "static_listeners": [{"listener": _typed(listener)} for listener in (static.listeners if static else ())],
         "dynamic_listeners": [{"name": entry["listener"]["name"], "active_state": entry}  # type: ignore[index]
                               for entry in entries("listeners", "listener")]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
         "dynamic_route_configs": entries("routes", "route_config")},
        {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
         "dynamic_active_secrets": _secret_entries(state.secrets)},
    ]}
    resource = params.get("resource")
    if resource:
        picked = [entry for config in dump["configs"] for entry in config.get(resource, [])]
        return 200, JSON, json.dumps({"configs": picked}, indent=1).encode()
    return 200, JSON, json.dumps(dump, indent=1).encode()


def _secret_entries(store: SecretStore | None) -> list[dict[str, object]]:
    """SDS secrets as Envoy dumps them: PEM as base64 inline_bytes, private keys redacted."""
    if store is None:
        return []
    out: list[dict[str, object]] = []
    for name in store.names():
        secret = store.get(name)
        if isinstance(secret, CertificateSecret):
            body: dict[str, object] = {"tls_certificate": {
                "certificate_chain": {"inline_bytes": base64.b64encode(secret.chain_pem).decode()},
                "private_key": {"inline_bytes": base64.b64encode(b"[redacted]").decode()}}}
        elif isinstance(secret, TrustBundle):
            body = {"validation_context": {
                "trusted_ca": {"inline_bytes": base64.b64encode(secret.trusted_ca_pem).decode()}}}
        else:
            continue
        out.append({"name": name, "version_info": str(store.version), "secret": {"name": name, **body}})
    return out


def _server_info(state: AdminState, params: dict[str, str]) -> Reply:
    uptime = int(time.time() - state.started)
    info = {
        "version": VERSION,
        "state": ("DRAINING" if state.health_check_failed else
                  "INITIALIZING" if state.initializing or state.starting else "LIVE"),
        "hot_restart_version": "disabled",
        "command_line_options": state.options,
        "node": {"id": state.config.node_id, "cluster": state.config.node_cluster},
        "uptime_current_epoch": f"{uptime}s",
        "uptime_all_epochs": f"{uptime}s",
    }
    return 200, JSON, json.dumps(info, indent=1).encode()


def _quit(state: AdminState) -> Reply:
    state.quit()
    return 200, TEXT, b"OK\n"


def _healthcheck_fail(state: AdminState) -> Reply:
    state.health_check_failed = True
    state.health_changed(True)
    return 200, TEXT, b"OK\n"


def _healthcheck_ok(state: AdminState) -> Reply:
    state.health_check_failed = False
    state.health_changed(False)
    return 200, TEXT, b"OK\n"


_READ: dict[str, Callable[[AdminState, dict[str, str]], Reply]] = {
    "/ready": _ready,
    "/stats": _stats,
    "/stats/prometheus": _prometheus,
    "/clusters": _clusters,
    "/config_dump": _config_dump,
    "/server_info": _server_info,
}
_MUTATING: dict[str, Callable[[AdminState], Reply]] = {
    "/quitquitquit": _quit,
    "/healthcheck/fail": _healthcheck_fail,
    "/healthcheck/ok": _healthcheck_ok,
}
