"""How a Cluster composes its balancer, breaker and pools: retries re-pick with hash
balancers, Envoy's whole-percent panic threshold, pools counted for remaining_cx_pools."""

from __future__ import annotations

import asyncio
import random

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.upstream.cluster import Cluster
from proxy.upstream.cluster_config import ClusterConfig, EndpointConfig


def config(extra: dict[str, object] | None = None, hosts: int = 3) -> ClusterConfig:
    message = json_format.ParseDict({
        "name": "c", "connect_timeout": "1s", **(extra or {}),
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": f"10.0.0.{i + 1}", "port_value": 80}}}}
            for i in range(hosts)]}]}}, ClusterProto())
    return ClusterConfig.from_proto(message, "c")


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_a_retry_with_a_hash_balancer_lands_on_another_host(policy: str) -> None:
    cluster = Cluster(config({"lb_policy": policy}), random.Random(1))
    first = cluster.choose(12345)
    assert first is not None
    assert cluster.choose(12345) is first
    again = cluster.choose(12345, avoid=[first], attempts=5)
    assert again is not None and again is not first


def test_the_panic_threshold_is_rounded_to_a_whole_percent() -> None:
    assert config({"common_lb_config": {"healthy_panic_threshold": {"value": 33.4}}}).panic_threshold == 33.0
    with pytest.raises(ConfigError) as error:
        config({"common_lb_config": {"healthy_panic_threshold": {"value": 101}}})
    assert error.value.path == "c.common_lb_config.healthy_panic_threshold.value"


def test_connection_pools_are_counted_for_remaining_cx_pools() -> None:
    async def scenario() -> None:
        cluster = Cluster(config(), random.Random(1))
        for host in cluster.host_set.hosts:
            cluster.pool(host)
        assert cluster.breaker.connection_pools == 3
        cluster.set_endpoints([EndpointConfig("10.0.0.1", 80)])
        assert cluster.breaker.connection_pools == 1
        await cluster.stop()
        assert cluster.breaker.connection_pools == 0
    asyncio.run(scenario())
