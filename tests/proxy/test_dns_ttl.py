"""respect_dns_ttl against the real Envoy: STRICT_DNS and LOGICAL_DNS clusters whose records
have a 1 s TTL and whose dns_refresh_rate is 2 s are re-resolved every TTL, pick up a changed
address within a TTL, fall back to dns_refresh_rate when the TTL is 0 and when the server
fails (keeping their hosts) — the same cadences, the same hosts, as Envoy 1.40 on the same
bootstrap, both with --concurrency 2 (the leader resolves); a name in /etc/hosts is answered
from it, without DNS, as in Envoy; each cluster's update_* stats count that DNS traffic as
Envoy's do. Each proxy runs in a namespace of
the test's own whose resolv.conf names a DNS server there (tests/proxy/dns_ttl_probe.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.proxy.dns_namespace import run_probe
from tests.proxy.dns_ttl_probe import NAMES, REFRESH, TTL

pytestmark = pytest.mark.privileged

CADENCE_SLACK = 0.25   # seconds: timers, the loop and the DNS server's thread


def observe(kind: str, *mode: str) -> dict[str, Any]:
    hosts = ""
    if mode == ("hosts",):
        hosts = "127.0.0.1 localhost\n127.0.0.2 " + " ".join(name for name, _ in NAMES.values()) + "\n"
    observed = run_probe("tests.proxy.dns_ttl_probe", kind, *mode, hosts=hosts)
    print(kind, observed)
    return observed


@pytest.fixture(scope="module")
def tulle() -> Iterator[dict[str, Any]]:
    yield observe("tulle-proxy")


@pytest.fixture(scope="module")
def envoy() -> Iterator[dict[str, Any]]:
    yield observe("envoy")


@pytest.mark.parametrize("cluster", list(NAMES))
def test_a_name_is_re_resolved_every_ttl_not_every_refresh_rate(tulle: dict[str, Any], cluster: str) -> None:
    assert tulle["ttl_1"][cluster] == pytest.approx(TTL, abs=CADENCE_SLACK)


@pytest.mark.parametrize("cluster", list(NAMES))
def test_a_changed_address_is_taken_within_a_ttl(tulle: dict[str, Any], cluster: str) -> None:
    assert tulle["before"][cluster] == 0
    assert tulle["pickup"][cluster] is not None
    assert tulle["pickup"][cluster] <= TTL + CADENCE_SLACK


@pytest.mark.parametrize("cluster", list(NAMES))
def test_a_ttl_of_zero_falls_back_to_the_refresh_rate(tulle: dict[str, Any], cluster: str) -> None:
    assert tulle["ttl_0"][cluster] == pytest.approx(REFRESH, abs=CADENCE_SLACK)


@pytest.mark.parametrize("cluster", list(NAMES))
def test_a_failing_server_is_asked_every_refresh_rate_and_the_hosts_are_kept(tulle: dict[str, Any],
                                                                               cluster: str) -> None:
    assert tulle["servfail"][cluster] == pytest.approx(REFRESH, abs=CADENCE_SLACK)
    assert tulle["after_failures"][cluster] == 1


@pytest.mark.parametrize("phase", ["ttl_1", "ttl_0", "servfail"])
def test_the_refresh_cadence_is_envoys(tulle: dict[str, Any], envoy: dict[str, Any], phase: str) -> None:
    for cluster in NAMES:
        print(f"{phase} {cluster}: tulle-proxy every {tulle[phase][cluster]} s, envoy every {envoy[phase][cluster]} s")
        assert envoy[phase][cluster] is not None
        assert tulle[phase][cluster] == pytest.approx(envoy[phase][cluster], abs=CADENCE_SLACK)


def test_the_hosts_are_envoys_before_and_after_the_changes(tulle: dict[str, Any], envoy: dict[str, Any]) -> None:
    assert (tulle["before"], tulle["after_failures"]) == (envoy["before"], envoy["after_failures"])


def test_a_changed_address_is_taken_as_soon_as_envoy_takes_it(tulle: dict[str, Any], envoy: dict[str, Any]) -> None:
    for cluster in NAMES:
        assert envoy["pickup"][cluster] is not None and envoy["pickup"][cluster] <= TTL + CADENCE_SLACK
        assert tulle["pickup"][cluster] is not None and tulle["pickup"][cluster] <= TTL + CADENCE_SLACK


def test_etc_hosts_answers_before_dns_as_in_envoy() -> None:
    tulle, envoy = observe("tulle-proxy", "hosts"), observe("envoy", "hosts")
    assert tulle == {"served_by": {cluster: 1 for cluster in NAMES}, "dns_queries": 0}
    assert tulle == envoy


@pytest.mark.parametrize("cluster", list(NAMES))
def test_each_resolution_is_counted_in_the_update_stats(tulle: dict[str, Any], cluster: str) -> None:
    # an attempt per resolution, a success per answer, a failure per SERVFAIL, a rebuild per
    # new address: the leader's counts, the proxy's (--concurrency 2)
    updates = tulle["updates"][cluster]
    assert updates["stats"] == updates["dns"]
    assert updates["stats"]["update_failure"] > 0 and updates["stats"]["update_no_rebuild"] > 0


def test_the_update_stats_count_the_dns_traffic_as_envoys_do(tulle: dict[str, Any], envoy: dict[str, Any]) -> None:
    for cluster in NAMES:
        print(f"{cluster}: tulle-proxy {tulle['updates'][cluster]}, envoy {envoy['updates'][cluster]}")
        assert envoy["updates"][cluster]["stats"] == envoy["updates"][cluster]["dns"]
        assert tulle["updates"][cluster]["stats"] == tulle["updates"][cluster]["dns"]
