"""Admin /clusters' success rates under outlier detection, against the real Envoy: each host's
`success_rate` and the cluster's `outlier::success_rate_average` and
`outlier::success_rate_ejection_threshold` of the last interval, on the same bootstrap and
traffic (5 hosts, one answering 503 to everything; ejections not enforced)."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from tests.ports import free_port
from tests.proxy.test_workers_health import bootstrap
from tests.proxy.upstream.envoy_peer import upstreams
from tests.proxy_process import ProxyProcess

HOSTS = 5
ROUND = 120 * HOSTS   # success_rate_request_volume (100) per host, with room for a tick in between


def outlier_bootstrap(listener: int, ports: list[int]) -> dict[str, Any]:
    config = bootstrap(listener, ports)
    cluster = config["static_resources"]["clusters"][0]
    del cluster["health_checks"]
    cluster["outlier_detection"] = {"interval": "2s", "enforcing_consecutive_5xx": 0, "enforcing_success_rate": 0}
    return config


def clusters_page(proxy: ProxyProcess) -> dict[str, str]:
    """cluster web's /clusters lines as {"outlier::...": value, "HOST::success_rate": value}."""
    page = {}
    for line in proxy.get("/clusters").decode().splitlines():
        parts = line.split("::")
        if parts[0] == "web" and (parts[1] == "outlier" or parts[2:3] == ["success_rate"]):
            page["::".join(parts[1:-1])] = parts[-1]
    return page


def observe(kind: Literal["envoy", "tulle-proxy"]) -> dict[str, str]:
    """The first page, after rounds of traffic, on which an interval computed the success rates,
    with each host named by its position in the cluster."""
    with upstreams(HOSTS, statuses=[503]) as ports:
        port = free_port()
        proxy = ProxyProcess(kind, outlier_bootstrap(port, ports), prefix=f"workerhealth-sr-{kind}-",
                             until_live=True)
        try:
            for _ in range(4):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                for _ in range(ROUND):
                    connection.request("GET", "/")
                    connection.getresponse().read()
                connection.close()
                deadline = time.monotonic() + 2.5   # an interval ends within it
                while time.monotonic() < deadline:
                    page = clusters_page(proxy)
                    if page["outlier::success_rate_average"] != "-1":
                        names = {f"127.0.0.1:{p}": f"host{i}" for i, p in enumerate(ports)}
                        return {"::".join(names.get(part, part) for part in key.split("::")): value
                                for key, value in page.items()}
                    time.sleep(0.1)
            raise AssertionError(f"{kind}: no interval computed success rates")
        finally:
            proxy.close()


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    yield observe("envoy"), observe("tulle-proxy")


def test_success_rates_are_envoys(pages: tuple[dict[str, str], dict[str, str]]) -> None:
    envoy, tulle = pages
    assert envoy["host0::success_rate"] == "0"
    assert [envoy[f"host{i}::success_rate"] for i in range(1, HOSTS)] == ["100"] * (HOSTS - 1)
    assert tulle == envoy
