"""A DNS cluster's DNS fields: what loads (Istio's DNS clusters among it), what each becomes,
and what is refused, by path."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.extensions.network.dns_resolver.apple.v3 import apple_dns_resolver_pb2  # noqa: F401
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2  # noqa: F401
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.upstream.cluster_config import ClusterConfig
from proxy.upstream.dns_refresh import DnsRefreshConfig
from proxy.upstream.dns_resolver import ResolverConfig

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"


def config(kind: str = "STRICT_DNS", **fields: Any) -> ClusterConfig:
    message = json_format.ParseDict({
        "name": "outbound|80||www.example.com", "type": kind, "connect_timeout": "10s", **fields,
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "www.example.com", "port_value": 80}}}}]}]}},
        ClusterProto())
    return ClusterConfig.from_proto(message, "clusters[0]")


def refused(**fields: Any) -> str:
    with pytest.raises(ConfigError) as error:
        config(**fields)
    return error.value.path


def cares(**fields: Any) -> dict[str, Any]:
    return {"name": "envoy.network.dns_resolver.cares", "typed_config": {"@type": CARES, **fields}}


@pytest.mark.parametrize("kind", ["STRICT_DNS", "LOGICAL_DNS"])
def test_istios_dns_cluster_loads(kind: str) -> None:
    # What Istio's cluster builder sets on a ServiceEntry with resolution DNS (STRICT_DNS)
    # or DNS_ROUND_ROBIN (LOGICAL_DNS), with c-ares' udp_max_queries at Istio's default
    # (PILOT_DNS_CARES_UDP_MAX_QUERIES, 100).
    loaded = config(kind, dns_lookup_family="V4_ONLY", respect_dns_ttl=True, dns_refresh_rate="60s",
                    dns_jitter="0.100s", typed_dns_resolver_config=cares(udp_max_queries=100))
    assert loaded.dns_refresh == DnsRefreshConfig(refresh_rate=60.0, respect_ttl=True, jitter=0.1)
    assert (loaded.type, loaded.dns_family, loaded.dns_resolver) == (kind, "V4_ONLY",
                                                                     ResolverConfig(udp_max_queries=100))


def test_the_defaults_are_envoys() -> None:
    loaded = config()
    assert (loaded.dns_refresh, loaded.dns_family, loaded.dns_resolver) == (DnsRefreshConfig(), "AUTO",
                                                                            ResolverConfig())


def test_dns_failure_refresh_rate_is_the_back_off() -> None:
    loaded = config(dns_failure_refresh_rate={"base_interval": "0.5s", "max_interval": "4s"})
    assert (loaded.dns_refresh.failure_base, loaded.dns_refresh.failure_max) == (0.5, 4.0)


def test_the_cares_resolver_settings_are_taken() -> None:
    loaded = config(typed_dns_resolver_config=cares(
        resolvers=[{"socket_address": {"address": "10.0.0.10", "port_value": 5353}},
                   {"socket_address": {"address": "fd00::10"}}],
        use_resolvers_as_fallback=True, query_timeout_seconds=2, query_tries=3, rotate_nameservers=True,
        dns_resolver_options={"use_tcp_for_dns_lookups": True, "no_default_search_domain": True}))
    assert loaded.dns_resolver == ResolverConfig(
        resolvers=("10.0.0.10:5353", "[fd00::10]:53"), resolvers_as_fallback=True, use_tcp=True,
        no_default_search_domain=True, query_timeout=2.0, query_tries=3, rotate=True)


def test_dns_resolution_config_comes_after_typed_dns_resolver_config() -> None:
    resolution = {"resolvers": [{"socket_address": {"address": "10.0.0.53"}}],
                  "dns_resolver_options": {"use_tcp_for_dns_lookups": True}}
    assert config(dns_resolution_config=resolution).dns_resolver == ResolverConfig(
        resolvers=("10.0.0.53:53",), use_tcp=True)
    assert config(dns_resolution_config=resolution,
                  typed_dns_resolver_config=cares()).dns_resolver == ResolverConfig()


def test_the_deprecated_resolver_fields_come_last() -> None:
    assert config(use_tcp_for_dns_lookups=True,
                  dns_resolvers=[{"socket_address": {"address": "10.0.0.53", "port_value": 53}}]
                  ).dns_resolver == ResolverConfig(resolvers=("10.0.0.53:53",), use_tcp=True)


def test_a_udp_max_queries_of_zero_is_c_ares_default_and_loads() -> None:
    assert config(typed_dns_resolver_config=cares(udp_max_queries=0)).dns_resolver == ResolverConfig()


def test_cares_options_pycares_cannot_set_are_refused_by_path() -> None:
    assert refused(typed_dns_resolver_config=cares(edns0_max_payload_size=1232)) == \
        "clusters[0].typed_dns_resolver_config.typed_config.edns0_max_payload_size"


def test_filter_unroutable_families_is_refused_by_path() -> None:
    assert refused(typed_dns_resolver_config=cares(filter_unroutable_families=True)) == \
        "clusters[0].typed_dns_resolver_config.typed_config.filter_unroutable_families"


def test_another_resolver_extension_is_refused() -> None:
    apple = {"name": "envoy.network.dns_resolver.apple", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.apple.v3.AppleDnsResolverConfig"}}
    assert refused(typed_dns_resolver_config=apple) == "clusters[0].typed_dns_resolver_config.typed_config"


def test_a_resolver_that_is_not_an_ip_is_refused() -> None:
    assert refused(dns_resolvers=[{"socket_address": {"address": "dns.example.com"}}]) == \
        "clusters[0].dns_resolvers[0].socket_address.address"


def test_a_failure_back_off_without_base_interval_is_refused() -> None:
    assert refused(dns_failure_refresh_rate={"max_interval": "4s"}) == \
        "clusters[0].dns_failure_refresh_rate.base_interval"


def test_a_max_interval_below_the_base_is_refused() -> None:
    assert refused(dns_failure_refresh_rate={"base_interval": "5s", "max_interval": "1s"}) == \
        "clusters[0].dns_failure_refresh_rate.max_interval"


def test_a_refresh_rate_below_a_millisecond_is_refused() -> None:
    assert refused(dns_refresh_rate="0s") == "clusters[0].dns_refresh_rate"


def test_a_negative_jitter_is_refused() -> None:
    assert refused(dns_jitter="-1s") == "clusters[0].dns_jitter"


def test_a_dns_cluster_extension_type_is_still_refused() -> None:
    # cluster_type envoy.cluster.dns (the DnsCluster extension) instead of `type`
    with pytest.raises(ConfigError) as error:
        ClusterConfig.from_proto(json_format.ParseDict({"name": "c", "cluster_type": {"name": "envoy.cluster.dns"}},
                                                       ClusterProto()), "clusters[0]")
    assert error.value.path == "clusters[0].cluster_type"
