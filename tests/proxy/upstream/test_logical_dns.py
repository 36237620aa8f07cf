"""LOGICAL_DNS clusters (Envoy): one endpoint, whose name's first address is the one host;
re-resolution moves new connections to the latest address; a failed one keeps it."""

from __future__ import annotations

import asyncio
import random

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.upstream.cluster import Cluster
from proxy.upstream.cluster_config import ClusterConfig
from proxy.upstream.dns_resolver import DnsAnswer, DnsFailure


def config(names: tuple[str, ...] = ("backend.test",), extra: dict[str, object] | None = None) -> ClusterConfig:
    message = json_format.ParseDict({
        "name": "c", "type": "LOGICAL_DNS", "connect_timeout": "1s", **(extra or {}),
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": name, "port_value": 80}}}}
            for name in names]}]}}, ClusterProto())
    return ClusterConfig.from_proto(message, "clusters[0]")


class Resolver:
    """The DNS answers, changed by the test (None: the resolution fails)."""

    def __init__(self, *addresses: str, ttl: float = 30.0) -> None:
        self.addresses: list[str] | None = list(addresses)
        self.ttl = ttl
        self.asked: list[tuple[str, str]] = []

    async def resolve(self, name: str, family: str) -> DnsAnswer:
        self.asked.append((name, family))
        if self.addresses is None:
            raise DnsFailure(f"no answer for {name}")
        return DnsAnswer(tuple(self.addresses), tuple(self.ttl for _ in self.addresses))


def resolved_hosts(cluster: Cluster, resolver: Resolver) -> list[str]:
    async def resolve() -> list[str]:
        cluster.dns_resolver = resolver
        for name in {endpoint.address for endpoint in cluster.config.endpoints}:
            _, changed = await cluster._resolve_name(name)
            if changed:
                cluster._apply_resolution()
        return [host.key for host in cluster.host_set.hosts]
    return asyncio.run(resolve())


def test_the_first_address_is_the_one_host() -> None:
    cluster = Cluster(config(), random.Random(1))
    assert resolved_hosts(cluster, Resolver("10.0.0.1", "10.0.0.2")) == ["10.0.0.1:80"]


def test_a_new_address_replaces_the_host() -> None:
    cluster = Cluster(config(), random.Random(1))
    resolved_hosts(cluster, Resolver("10.0.0.1"))
    assert resolved_hosts(cluster, Resolver("10.0.0.7", "10.0.0.1")) == ["10.0.0.7:80"]


def test_a_failed_resolution_keeps_the_address() -> None:
    cluster = Cluster(config(), random.Random(1))
    resolved_hosts(cluster, Resolver("10.0.0.1"))
    assert resolved_hosts(cluster, Resolver()) == ["10.0.0.1:80"]
    failing = Resolver()
    failing.addresses = None
    assert resolved_hosts(cluster, failing) == ["10.0.0.1:80"]


def test_the_host_keeps_the_name_for_auto_host_rewrite() -> None:
    cluster = Cluster(config(), random.Random(1))
    resolved_hosts(cluster, Resolver("10.0.0.1"))
    [host] = cluster.host_set.hosts
    assert cluster.hostnames[host] == "backend.test"


def test_more_than_one_endpoint_is_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        config(("a.test", "b.test"))
    assert error.value.path == "clusters[0].load_assignment"
    assert "single lb_endpoint" in error.value.reason

