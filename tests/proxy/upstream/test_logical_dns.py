"""LOGICAL_DNS clusters (Envoy): one endpoint, whose name's first address is the one host;
re-resolution moves new connections to the latest address; a failed one keeps it."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.upstream.cluster import Cluster
from proxy.upstream.cluster_config import ClusterConfig


def config(names: tuple[str, ...] = ("backend.test",), extra: dict[str, object] | None = None) -> ClusterConfig:
    message = json_format.ParseDict({
        "name": "c", "type": "LOGICAL_DNS", "connect_timeout": "1s", **(extra or {}),
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": name, "port_value": 80}}}}
            for name in names]}]}}, ClusterProto())
    return ClusterConfig.from_proto(message, "clusters[0]")


class Resolver:
    """getaddrinfo's answers, changed by the test."""

    def __init__(self, *addresses: str) -> None:
        self.addresses: list[str] | None = list(addresses)

    async def getaddrinfo(self, host: str, port: int, **_: Any) -> list[Any]:
        if self.addresses is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in self.addresses]


def resolved_hosts(cluster: Cluster, resolver: Resolver) -> list[str]:
    async def resolve() -> list[str]:
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = resolver.getaddrinfo  # type: ignore[method-assign,assignment]
        await cluster._resolve()
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


def test_respect_dns_ttl_is_rejected_naming_it() -> None:
    with pytest.raises(ConfigError) as error:
        config(extra={"respect_dns_ttl": True})
    assert error.value.path == "clusters[0].respect_dns_ttl"
