"""A real Envoy 1.40, bootstrapped with nothing but an ADS cluster, runs on tulle-control:
in state-of-the-world (GRPC) and incremental (DELTA_GRPC) mode alike."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2

from control.xds.node_identity import NodeIdentity
from control.xds.proxy_commands import proxy_config, proxy_status
from control.xds.resources import CLUSTER, Resource
from tests.ports import free_port
from tests.xds.harness import (
    ControlPlane,
    Envoy,
    Upstream,
    endpoints,
    eventually,
    http_get,
    pod,
    service,
)

NODE_ID = "sidecar~127.0.0.1~client-0.default~default.svc.cluster.local"
_loopback = (f"127.0.0.{i}" for i in itertools.count(2))


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    made: list[Upstream] = []
    try:
        yield made
    finally:
        for u in made:
            u.close()


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def envoy(request: pytest.FixtureRequest, control: ControlPlane) -> Iterator[Envoy]:
    proxy = Envoy(control.port, request.param, NODE_ID, {"INTERCEPTION_MODE": "NONE", "NAMESPACE": "default"})
    try:
        yield proxy
    finally:
        proxy.close()


def _pods(control: ControlPlane, upstreams: list[Upstream], svc: str, versions: list[str]) -> list[tuple[str, Upstream]]:
    """Start one upstream per version and apply its Pod; returns (pod name, upstream)."""
    out = []
    for version in versions:
        u = Upstream(f"{svc}-{version}-{len(upstreams)}", next(_loopback))
        upstreams.append(u)
        control.apply(pod(u.name, u.host, {"app": svc, "version": version}))
        out.append((u.name, u))
    return out


def _mesh(control: ControlPlane, upstreams: list[Upstream], versions: list[str]) -> tuple[int, list[tuple[str, Upstream]]]:
    port = free_port()
    members = _pods(control, upstreams, "web", versions)
    control.apply(service("web", port), endpoints("web", members))
    control.apply(
        {
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"host": "web", "subsets": [{"name": v, "labels": {"version": v}} for v in sorted(set(versions))]},
        }
    )
    return port, members


def _virtual_service(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"hosts": ["web"], "http": http},
    }


def _get(port: int, path: str = "/", **headers: str) -> tuple[int, str]:
    return http_get(port, path, host="web.default", headers=headers)


def test_routes_by_path_and_header_per_virtual_service(control: ControlPlane, upstreams: list[Upstream], envoy: Envoy) -> None:
    port, _ = _mesh(control, upstreams, ["v1", "v2"])
    control.apply(
        _virtual_service(
            [
                {"match": [{"headers": {"x-canary": {"exact": "yes"}}}], "route": [{"destination": {"host": "web", "subset": "v2"}}]},
                {"match": [{"uri": {"prefix": "/v2"}}], "route": [{"destination": {"host": "web", "subset": "v2"}}]},
                {"route": [{"destination": {"host": "web", "subset": "v1"}}]},
            ]
        )
    )
    assert eventually(lambda: _get(port, "/v2/page") == (200, "web-v2-1"))
    assert _get(port, "/other") == (200, "web-v1-0")
    assert _get(port, "/other", **{"x-canary": "yes"}) == (200, "web-v2-1")


def test_weighted_split_is_observed_within_tolerance(control: ControlPlane, upstreams: list[Upstream], envoy: Envoy) -> None:
    port, _ = _mesh(control, upstreams, ["v1", "v2"])
    control.apply(
        _virtual_service(
            [{"route": [
                {"destination": {"host": "web", "subset": "v1"}, "weight": 80},
                {"destination": {"host": "web", "subset": "v2"}, "weight": 20},
            ]}]
        )
    )
    eventually(lambda: _get(port)[0] == 200 and envoy_has_weighted_route(envoy))
    seen = Counter(_get(port)[1] for _ in range(400))
    # Binomial(400, 0.8): mean 320, sd 8; ±40 is five sigma.
    assert 280 <= seen["web-v1-0"] <= 360, seen
    assert seen["web-v1-0"] + seen["web-v2-1"] == 400, seen


def envoy_has_weighted_route(envoy: Envoy) -> bool:
    return "weighted_clusters" in str(envoy.config_dump("dynamic_route_configs"))


@pytest.mark.parametrize("policy", ["LEAST_REQUEST", "ROUND_ROBIN"])
def test_destination_rule_lb_policy_shows_in_config_dump(
    control: ControlPlane, upstreams: list[Upstream], envoy: Envoy, policy: str
) -> None:
    port, _ = _mesh(control, upstreams, ["v1"])
    control.apply(
        {
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"host": "web.default.svc.cluster.local", "trafficPolicy": {
                "loadBalancer": {"simple": policy},
                "connectionPool": {"tcp": {"maxConnections": 7}},
                "outlierDetection": {"consecutive5xxErrors": 3, "interval": "5s", "baseEjectionTime": "30s"},
            }},
        }
    )
    name = f"outbound|{port}||web.default.svc.cluster.local"

    def dumped() -> dict[str, Any] | None:
        # `{}` while no dynamic cluster is active (a CDS update in flight)
        for c in envoy.config_dump("dynamic_active_clusters").get("configs", []):
            if c["cluster"]["name"] == name and c["cluster"].get("circuit_breakers"):
                return c["cluster"]
        return None

    cluster = eventually(dumped)
    # Envoy omits the enum default (ROUND_ROBIN) from its dump.
    assert cluster.get("lb_policy", "ROUND_ROBIN") == policy
    assert cluster["circuit_breakers"]["thresholds"][0]["max_connections"] == 7
    assert cluster["outlier_detection"]["consecutive_5xx"] == 3


def test_added_pod_becomes_an_endpoint_that_receives_traffic(control: ControlPlane, upstreams: list[Upstream], envoy: Envoy) -> None:
    port, members = _mesh(control, upstreams, ["v1"])
    eventually(lambda: _get(port) == (200, "web-v1-0"))
    members += _pods(control, upstreams, "web", ["v1"])
    control.apply(endpoints("web", members))
    added = members[1][1]
    eventually(lambda: any(_get(port)[1] == added.name for _ in range(10)))
    assert added.hits > 0


def test_deleting_a_virtual_service_removes_its_route(control: ControlPlane, upstreams: list[Upstream], envoy: Envoy) -> None:
    port, _ = _mesh(control, upstreams, ["v1"])
    control.apply(_virtual_service([{"match": [{"uri": {"exact": "/only"}}], "route": [{"destination": {"host": "web"}}]}]))
    eventually(lambda: _get(port, "/only")[0] == 200 and _get(port, "/elsewhere")[0] == 404)
    control.call(control.server.delete, "VirtualService", "default", "web")
    # Back to the default route: every path reaches the service.
    assert eventually(lambda: _get(port, "/elsewhere")[0] == 200)
    assert "/only" not in str(envoy.config_dump("dynamic_route_configs"))


def test_invalid_resource_is_nacked_and_the_nack_is_recorded(control: ControlPlane, upstreams: list[Upstream], envoy: Envoy) -> None:
    port, _ = _mesh(control, upstreams, ["v1"])
    eventually(lambda: _get(port) == (200, "web-v1-0"))

    def break_one_cluster(node: NodeIdentity, resources: list[Resource]) -> list[Resource]:
        # A negative connect timeout violates Envoy's proto validation.
        bad = cluster_pb2.Cluster(name="bad", type=cluster_pb2.Cluster.STATIC)
        bad.connect_timeout.seconds = -1
        return [*resources, Resource("bad", bad)]

    control.server.override = break_one_cluster
    control.apply(service("other", free_port()))

    def nacked() -> Any:
        for status in control.call(control.server.status):
            for t in status.types:
                if t.type_url == CLUSTER and t.last_nack is not None:
                    return status, t
        return None

    status, t = eventually(nacked)
    assert status.node_id == NODE_ID
    assert "Invalid duration" in t.last_nack.message
    assert t.acked_version != t.last_nack.version_info
    # Envoy kept its last good clusters: traffic still flows.
    assert _get(port) == (200, "web-v1-0")


def test_proxy_status_shows_the_nack_and_proxy_config_what_the_node_is_sent(
    control: ControlPlane, upstreams: list[Upstream], envoy: Envoy
) -> None:
    port, members = _mesh(control, upstreams, ["v1"])
    eventually(lambda: _get(port) == (200, "web-v1-0"))
    xds = ["--xds", f"127.0.0.1:{control.port}"]
    runner = CliRunner()
    status = runner.invoke(proxy_status, xds)
    assert status.exit_code == 0, status.output
    assert NODE_ID in status.output and "SYNCED" in status.output

    clusters = runner.invoke(proxy_config, ["client-0", "clusters", *xds])
    assert f"outbound|{port}||web.default.svc.cluster.local" in clusters.output
    upstream = members[0][1]
    endpoints_out = runner.invoke(proxy_config, [NODE_ID, "endpoints", *xds])
    assert f"{upstream.host}:{upstream.port}" in endpoints_out.output
    routes = json.loads(runner.invoke(proxy_config, ["client-0", "routes", "-o", "json", *xds]).output)
    assert [r["name"] for r in routes] == [str(port)]

    control.server.override = lambda node, resources: [
        *resources, Resource("bad", cluster_pb2.Cluster(name="bad", connect_timeout=duration_pb2.Duration(seconds=-1)))
    ]
    control.apply(service("other", free_port()))

    def nacked_status() -> str | None:
        out = runner.invoke(proxy_status, xds).output
        return out if "NACKED" in out else None

    nacked = eventually(nacked_status)
    assert "last NACK from " + NODE_ID in nacked
    assert "Invalid duration" in nacked


def test_deleting_a_service_removes_its_cluster_and_route(control: ControlPlane, upstreams: list[Upstream], envoy: Envoy) -> None:
    port, _ = _mesh(control, upstreams, ["v1"])
    name = f"outbound|{port}||web.default.svc.cluster.local"

    def clusters() -> set[str]:
        return {c["cluster"]["name"] for c in envoy.config_dump("dynamic_active_clusters").get("configs", [])}

    eventually(lambda: name in clusters())
    control.call(control.server.delete, "Service", "default", "web")
    eventually(lambda: name not in clusters())
    assert eventually(lambda: _get(port)[0] == 0)  # no service on the port: no listener
