"""Admin endpoints: Envoy's paths, formats and stat names."""

from __future__ import annotations

import base64
import json
import random

import pytest

from proxy.admin.endpoints import AdminState, handle
from proxy.bootstrap import parse_bootstrap
from proxy.stats import HttpStats, StatsStore
from proxy.tls.secrets import CertificateSecret, SecretStore, TrustBundle
from proxy.upstream.cluster import Cluster
from tests.proxy.running import bootstrap


@pytest.fixture
def state() -> AdminState:
    config = parse_bootstrap(bootstrap(10000, 8080))
    stats = StatsStore()
    clusters = {}
    for cluster_config in config.clusters:
        cluster = Cluster(cluster_config, random.Random(1))
        clusters[cluster.name] = cluster
        stats.register("cluster", cluster.name, cluster.stats, cluster.extra_stats)
    clusters["a"].stats.upstream_rq_total = 7
    return AdminState(config, stats, clusters)


def test_ready_is_live_until_healthcheck_fail(state: AdminState) -> None:
    assert handle(state, "GET", "/ready") == (200, "text/plain; charset=UTF-8", b"LIVE\n")
    assert handle(state, "POST", "/healthcheck/fail")[0] == 200
    assert handle(state, "GET", "/ready")[0] == 503
    assert handle(state, "POST", "/healthcheck/ok")[0] == 200
    assert handle(state, "GET", "/ready")[0] == 200


def test_mutating_endpoints_need_post(state: AdminState) -> None:
    assert handle(state, "GET", "/quitquitquit")[0] == 405
    assert handle(state, "GET", "/healthcheck/fail")[0] == 405


def test_stats_use_envoys_names(state: AdminState) -> None:
    status, _, body = handle(state, "GET", "/stats")
    lines = body.decode().splitlines()
    assert status == 200
    assert "cluster.a.upstream_rq_total: 7" in lines
    assert "cluster.a.circuit_breakers.default.rq_open: 0" in lines
    assert "cluster.a.upstream_rq_pending_overflow: 0" in lines
    assert lines == sorted(lines)


def test_stats_filter(state: AdminState) -> None:
    _, _, body = handle(state, "GET", "/stats?filter=upstream_rq_total")
    assert body.decode().splitlines() == ["cluster.a.upstream_rq_total: 7"]


def test_prometheus_format(state: AdminState) -> None:
    _, _, body = handle(state, "GET", "/stats/prometheus")
    text = body.decode()
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in text
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="a"} 7' in text
    assert "# TYPE envoy_cluster_upstream_cx_active gauge" in text


def test_clusters_lists_hosts_and_thresholds(state: AdminState) -> None:
    _, _, body = handle(state, "GET", "/clusters")
    lines = body.decode().splitlines()
    assert "a::default_priority::max_requests::1024" in lines
    assert "a::127.0.0.1:8080::health_flags::healthy" in lines


def test_config_dump_and_server_info_are_json(state: AdminState) -> None:
    dump = json.loads(handle(state, "GET", "/config_dump")[2])
    assert dump["configs"][0]["bootstrap"]["static_resources"]["clusters"][0]["name"] == "a"
    info = json.loads(handle(state, "GET", "/server_info")[2])
    assert info["state"] == "LIVE"


def test_unknown_path_is_404(state: AdminState) -> None:
    assert handle(state, "GET", "/nope")[0] == 404


def test_ready_is_initializing_until_the_first_xds_listeners(state: AdminState) -> None:
    state.initializing = True
    assert handle(state, "GET", "/ready") == (503, "text/plain; charset=UTF-8", b"INITIALIZING\n")
    assert json.loads(handle(state, "GET", "/server_info")[2])["state"] == "INITIALIZING"
    state.initializing = False
    assert handle(state, "GET", "/ready")[0] == 200


def test_config_dump_shows_secrets_with_the_private_key_redacted(state: AdminState) -> None:
    state.secrets = SecretStore()
    state.secrets.update({"default": CertificateSecret(b"CHAIN PEM", b"KEY PEM"), "ROOTCA": TrustBundle(b"ROOT PEM")})
    dump = json.loads(handle(state, "GET", "/config_dump")[2])
    secrets = next(c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump"))["dynamic_active_secrets"]
    by_name = {entry["name"]: entry["secret"] for entry in secrets}
    certificate = by_name["default"]["tls_certificate"]
    assert base64.b64decode(certificate["certificate_chain"]["inline_bytes"]) == b"CHAIN PEM"
    assert b"KEY PEM" not in base64.b64decode(certificate["private_key"]["inline_bytes"])
    assert base64.b64decode(by_name["ROOTCA"]["validation_context"]["trusted_ca"]["inline_bytes"]) == b"ROOT PEM"


def test_filters_with_one_stat_prefix_count_together_as_in_envoy() -> None:
    store = StatsStore()
    tls_chain, plain_chain = HttpStats(), HttpStats()
    first = store.share("http", "inbound_0.0.0.0_8080", tls_chain, lambda: {"rbac.denied": 1})
    second = store.share("http", "inbound_0.0.0.0_8080", plain_chain, lambda: {"rbac.denied": 2})
    assert first is second is tls_chain
    first.downstream_rq_total += 3
    second.downstream_rq_total += 4
    text = store.render_text()
    assert "http.inbound_0.0.0.0_8080.downstream_rq_total: 7" in text
    assert "http.inbound_0.0.0.0_8080.rbac.denied: 3" in text


def test_config_dump_lists_static_clusters_and_listeners_as_envoy_does(state: AdminState) -> None:
    dump = json.loads(handle(state, "GET", "/config_dump")[2])
    clusters = next(config for config in dump["configs"] if config["@type"].endswith("ClustersConfigDump"))
    assert [entry["cluster"]["name"] for entry in clusters["static_clusters"]] == ["a"]
    assert clusters["static_clusters"][0]["cluster"]["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def test_config_dump_resource_picks_one_section(state: AdminState) -> None:
    dump = json.loads(handle(state, "GET", "/config_dump?resource=static_clusters")[2])
    assert [entry["cluster"]["name"] for entry in dump["configs"]] == ["a"]


def test_clusters_prints_every_host_field_envoy_prints(state: AdminState) -> None:
    lines = handle(state, "GET", "/clusters")[2].decode().splitlines()
    fields = [line.split("::")[2] for line in lines if line.startswith("a::127.0.0.1:8080::")]
    assert fields == ["cx_active", "cx_connect_fail", "cx_total", "rq_active", "rq_error", "rq_pending_active",
                      "rq_success", "rq_timeout", "rq_total", "hostname", "health_flags", "weight", "region",
                      "zone", "sub_zone", "canary", "priority", "success_rate", "local_origin_success_rate"]
    assert "a::high_priority::max_retries::3" in lines


def test_clusters_shows_outlier_detections_success_rates_as_envoy_does() -> None:
    config = parse_bootstrap(bootstrap(10000, 8080, cluster_extra="    outlier_detection: {}"))
    cluster = Cluster(config.clusters[0], random.Random(1))
    state = AdminState(config, StatsStore(), {"a": cluster})
    lines = handle(state, "GET", "/clusters")[2].decode().splitlines()
    # Envoy 1.40's lines and order (tests/proxy/envoy_admin/envoy-1.40-clusters.txt): -1 until
    # an interval had enough hosts with enough requests
    assert lines[:5] == ["a::observability_name::a",
                         "a::outlier::success_rate_average::-1",
                         "a::outlier::success_rate_ejection_threshold::-1",
                         "a::outlier::local_origin_success_rate_average::-1",
                         "a::outlier::local_origin_success_rate_ejection_threshold::-1"]
