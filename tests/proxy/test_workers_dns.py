"""--concurrency 2 with a STRICT_DNS cluster: the name is resolved once per refresh for the whole
proxy (the leader's), not once per worker, and every worker balances over what it resolved —
as the real Envoy (its main thread resolving) does with --concurrency 2 on the same bootstrap
and traffic. Each proxy runs in a namespace of the test's own, whose resolv.conf names a
counting DNS server there (tests/proxy/dns_probe.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.proxy.dns_namespace import run_probe

pytestmark = pytest.mark.privileged


def observe(kind: str) -> dict[str, Any]:
    return run_probe("tests.proxy.dns_probe", kind, timeout=90)


@pytest.fixture(scope="module")
def tulle() -> Iterator[dict[str, Any]]:
    yield observe("tulle-proxy")


@pytest.fixture(scope="module")
def envoy() -> Iterator[dict[str, Any]]:
    yield observe("envoy")


def test_a_dns_cluster_is_resolved_once_per_refresh_not_once_per_worker(tulle: dict[str, Any]) -> None:
    print(f"tulle-proxy --concurrency 2: {tulle['queries_per_refresh']:.2f} queries per refresh")
    assert 0.6 <= tulle["queries_per_refresh"] <= 1.4   # a resolver per worker: about 2


def test_every_worker_balances_over_what_the_leader_resolved(tulle: dict[str, Any]) -> None:
    assert tulle["before"] == {"statuses": ["200"], "requests": [30, 0], "workers": [2, 0]}
    # a new answer reaches every worker
    assert tulle["after"] == {"statuses": ["200"], "requests": [0, 30], "workers": [0, 2]}


def test_dns_under_concurrency_is_what_envoy_shows(tulle: dict[str, Any], envoy: dict[str, Any]) -> None:
    print(f"queries per refresh: tulle-proxy {tulle['queries_per_refresh']:.2f}, "
          f"envoy {envoy['queries_per_refresh']:.2f}")
    assert abs(tulle["queries_per_refresh"] - envoy["queries_per_refresh"]) <= 0.4
    assert (tulle["before"], tulle["after"]) == (envoy["before"], envoy["after"])
