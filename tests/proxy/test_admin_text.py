"""Reading the admin's text pages back: `/stats` (proxy/stats_text.py) and `/clusters`
(proxy/admin/clusters_text.py), from Tulle's own renderings and from a real Envoy 1.40's."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.admin.clusters_text import ClustersTextError, parse_clusters
from proxy.admin.endpoints import AdminState, handle
from proxy.bootstrap import parse_bootstrap
from proxy.stats import ClusterStats, HttpStats, ListenerStats, Scope, StatsStore, TcpProxyStats
from proxy.stats_text import StatsTextError, parse_stats
from proxy.upstream.cluster import Cluster
from tests.proxy.running import bootstrap

SAMPLES = Path(__file__).with_name("envoy_admin")
CATALOG = "outbound|8080|v1|catalog.shop.svc.cluster.local"


def store_with(counts: list[int]) -> StatsStore:
    """A store with one scope of each kind, an extra and a server gauge, its stats set from `counts`."""
    store = StatsStore()
    scopes: list[Scope] = [ClusterStats(), HttpStats(), TcpProxyStats(), ListenerStats()]
    store.register("cluster", CATALOG, scopes[0], lambda: {"circuit_breakers.default.cx_open": 1})
    for kind, name, scope in zip(("http", "tcp", "listener"), ("inbound_0.0.0.0_8080", "outbound_0.0.0.0_9000",
                                                                "0.0.0.0_15006"), scopes[1:], strict=True):
        store.register(kind, name, scope)
    store.server_gauges["live"] = 1
    stats = [(scope, f.name) for scope in scopes for f in dataclasses.fields(scope)
             if type(getattr(scope, f.name)) is int]   # (not a cluster's response code tables)
    for (scope, name), value in zip(stats, counts, strict=False):
        setattr(scope, name, value)
    return store


# -- /stats ----------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=80))
def test_stats_render_text_reads_back_to_the_stores_values(counts: list[int]) -> None:
    store = store_with(counts)
    page = parse_stats(store.render_text())
    assert page.values == {name: value for name, *_, value, _ in store.values()}
    assert page.text_readouts == {} and page.histograms == {}


def test_stats_a_filtered_page_reads_back_to_the_stats_it_kept() -> None:
    store = store_with([7] * 80)
    page = parse_stats(store.render_text("upstream_rq_total"))
    assert page.values == {f"cluster.{CATALOG}.upstream_rq_total": 7}


def test_stats_an_empty_page_has_no_stats() -> None:
    assert parse_stats("").values == {}


def test_stats_matching_selects_by_regex_like_the_admin_filter() -> None:
    page = parse_stats(store_with([3] * 80).render_text())
    assert page.matching(r"^listener\..*downstream_cx_total$") == {"listener.0.0.0.0_15006.downstream_cx_total": 3}


def test_stats_envoy_140_counters_and_gauges() -> None:
    page = parse_stats((SAMPLES / "envoy-1.40-stats.txt").read_text())
    assert page.values[f"cluster.{CATALOG}.upstream_cx_connect_fail"] == 3
    assert page.values[f"cluster.{CATALOG}.upstream_rq_503"] == 3
    assert page.values["http.ingress.downstream_rq_5xx"] == 3
    assert page.values["listener.127.0.0.1_0.downstream_cx_total"] == 3  # the address's ':' became '_'
    assert page.values["server.concurrency"] == 1


def test_stats_envoy_140_every_line_is_read() -> None:
    text = (SAMPLES / "envoy-1.40-stats.txt").read_text()
    page = parse_stats(text)
    assert len(page.values) + len(page.text_readouts) + len(page.histograms) == len(text.splitlines())


def test_stats_envoy_140_text_readouts_lose_their_quotes() -> None:
    page = parse_stats((SAMPLES / "envoy-1.40-stats.txt").read_text())
    assert page.text_readouts == {"cluster_manager.cds.version_text": "", "control_plane.identifier": ""}


def test_stats_envoy_140_histograms_keep_their_summary() -> None:
    page = parse_stats((SAMPLES / "envoy-1.40-stats.txt").read_text())
    assert page.histograms[f"cluster.{CATALOG}.upstream_cx_connect_ms"] == "No recorded values"
    assert page.histograms["http.ingress.downstream_rq_time"].startswith("P0(0,0) P25(0,0) P50(0,0)")
    assert "http.ingress.downstream_rq_time" not in page.values


def test_stats_envoy_140_detailed_histograms_span_their_indented_lines() -> None:
    page = parse_stats((SAMPLES / "envoy-1.40-stats-detailed.txt").read_text())
    assert page.histograms["http.ingress.downstream_rq_time"].splitlines() == [
        "totals=0,0:3", "intervals=0,0:3",
        "summary=P0(0,0) P25(0,0) P50(0,0) P75(0,0) P90(0,0) P95(0,0) P99(0,0) P99.5(0,0) P99.9(0,0) P100(0,0)"]
    assert page.values["http.ingress.downstream_rq_5xx"] == 3


def test_stats_cumulative_bucket_histograms_are_histograms() -> None:
    line = "http.ingress.downstream_rq_time: B0.5(3,3) B1(3,3) B1.8e+06(3,3) B3.6e+06(3,3)"
    assert parse_stats(line).histograms == {"http.ingress.downstream_rq_time": line.partition(": ")[2]}


def test_stats_a_text_readout_may_hold_the_separator() -> None:
    assert parse_stats('a.b: "x: y"\n').text_readouts == {"a.b": "x: y"}


@pytest.mark.parametrize(("text", "message"), [
    ("<html>no such page</html>", "line 1: '<html>no such page</html>' is not `NAME: VALUE`"),
    ("a.b: 1\na.c: lots\n", "line 2: the value of a.c ('lots') is neither"),
    ("a.b: 1\nan error: 2\n", "line 2: 'an error' is not a stat name"),
])
def test_stats_a_page_not_in_envoys_format_is_an_error_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(StatsTextError, match=re.escape(message)):
        parse_stats(text)


# -- /clusters -------------------------------------------------------------------------


def test_clusters_tulles_rendering_reads_back() -> None:
    config = parse_bootstrap(bootstrap(10000, 8080))
    clusters = {c.name: Cluster(c, random.Random(1)) for c in config.clusters}
    state = AdminState(config, StatsStore(), clusters)
    page = parse_clusters(handle(state, "GET", "/clusters")[2].decode())
    assert list(page) == list(clusters)
    assert page["a"].settings["default_priority::max_requests"] == "1024"
    assert page["a"].settings["added_via_api"] == "false"
    assert page["a"].hosts["127.0.0.1:8080"]["health_flags"] == "healthy"
    assert page["a"].healthy_hosts() == ["127.0.0.1:8080"]


def test_clusters_envoy_140_settings_and_hosts() -> None:
    page = parse_clusters((SAMPLES / "envoy-1.40-clusters.txt").read_text())
    assert set(page) == {CATALOG, "xds-grpc"}
    catalog = page[CATALOG]
    assert catalog.settings["outlier::success_rate_average"] == "-1"
    assert catalog.settings["high_priority::max_retries"] == "3"
    assert catalog.settings["observability_name"] == CATALOG
    host = catalog.hosts["127.0.0.1:1"]
    assert (host["cx_connect_fail"], host["hostname"], host["health_flags"]) == ("3", "", "healthy")
    assert "outlier::success_rate_average" not in page["xds-grpc"].settings  # no outlier detection there


def test_clusters_an_ipv6_host_keeps_its_colons() -> None:
    page = parse_clusters("c::[fd00::1]:8080::health_flags::/failed_outlier_check\nc::[fd00::1]:8080::rq_total::4\n")
    assert page["c"].hosts == {"[fd00::1]:8080": {"health_flags": "/failed_outlier_check", "rq_total": "4"}}
    assert page["c"].healthy_hosts() == []


def test_clusters_a_line_without_parts_is_an_error_naming_it() -> None:
    with pytest.raises(ClustersTextError, match=re.escape("line 2: 'oops' is not `CLUSTER::...`")):
        parse_clusters("c::added_via_api::false\noops\n")
