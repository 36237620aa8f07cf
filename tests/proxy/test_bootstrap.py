"""Bootstrap validation: what tulle-proxy cannot honour fails start-up, naming the field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proxy.bootstrap import parse_bootstrap
from proxy.config_error import ConfigError
from tests.proxy_process import TULLE

LISTENER = """
    - name: main
      address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
      filter_chains:
      - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: main
            %(hcm_extra)s
            route_config:
              virtual_hosts:
              - {name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a}}]}
            http_filters:
            - name: envoy.filters.http.router
              typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""

CLUSTER = """
    - name: a
      connect_timeout: 1s
      %(cluster_extra)s
      load_assignment:
        cluster_name: a
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]
"""


def bootstrap(hcm_extra: str = "", cluster_extra: str = "", top: str = "") -> str:
    return (top + "\nstatic_resources:\n  listeners:\n" + LISTENER % {"hcm_extra": hcm_extra}
            + "  clusters:\n" + CLUSTER % {"cluster_extra": cluster_extra})


def test_a_supported_bootstrap_loads() -> None:
    config = parse_bootstrap(bootstrap())
    assert [listener.name for listener in config.listeners] == ["main"]
    assert config.clusters[0].name == "a"
    assert config.clusters[0].connect_timeout == 1.0


@pytest.mark.parametrize(("text", "path"), [
    (bootstrap(cluster_extra="upstream_bind_config: {source_address: {address: 127.0.0.1, port_value: 0}}"),
     "static_resources.clusters[0].upstream_bind_config"),
    (bootstrap(cluster_extra="lb_policy: CLUSTER_PROVIDED"), "static_resources.clusters[0].lb_policy"),
    (bootstrap(cluster_extra="circuit_breakers: {thresholds: [{max_requests: 2, max_connection_pools: 3}]}"),
     "static_resources.clusters[0].circuit_breakers.thresholds[0].max_connection_pools"),
    (bootstrap(hcm_extra="add_user_agent: true"),
     "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.add_user_agent"),
    (bootstrap(hcm_extra="codec_type: HTTP2"),
     "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.codec_type"),
    (bootstrap(top="stats_flush_interval: 5s"), "stats_flush_interval"),
    (bootstrap(hcm_extra="via: tulle"),
     "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.via"),
    (bootstrap(top="dynamic_resources: {ads_config: {api_type: REST}}"),
     "dynamic_resources.ads_config.api_type"),
    (bootstrap(cluster_extra="http2_protocol_options: {}"), "static_resources.clusters[0]"),
])
def test_unsupported_field_is_rejected_with_its_path(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_bootstrap(text)
    assert error.value.path == path


def test_unknown_cluster_in_a_route_is_rejected() -> None:
    text = bootstrap().replace("route: {cluster: a}", "route: {cluster: nowhere}")
    with pytest.raises(ConfigError, match="unknown cluster 'nowhere'"):
        parse_bootstrap(text)


def test_a_misspelt_field_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="connect_timeot"):
        parse_bootstrap(bootstrap().replace("connect_timeout", "connect_timeot"))


def test_static_cluster_needs_ip_addresses() -> None:
    with pytest.raises(ConfigError, match=r"socket_address\.address.*STRICT_DNS"):
        parse_bootstrap(bootstrap().replace("address: 127.0.0.1, port_value: 8080", "address: localhost, port_value: 8080"))


def test_only_the_router_http_filter_is_supported() -> None:
    text = bootstrap().replace("http_filters:\n", "http_filters:\n            - name: envoy.filters.http.cors\n"
                               "              typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}\n", 1)
    from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401

    with pytest.raises(ConfigError, match=r"http_filters\[0\]: HTTP filter 'envoy.filters.http.cors'"):
        parse_bootstrap(text)


def test_cli_fails_start_up_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(bootstrap(cluster_extra="lb_policy: CLUSTER_PROVIDED"))
    completed = subprocess.run([str(TULLE), "-c", str(config)], capture_output=True, text=True,
                               timeout=30, check=False)
    assert completed.returncode == 1
    assert "static_resources.clusters[0].lb_policy" in completed.stderr


def test_cli_validate_mode_accepts_a_good_file(tmp_path: Path) -> None:
    config = tmp_path / "good.yaml"
    config.write_text(bootstrap())
    completed = subprocess.run([str(TULLE), "-c", str(config), "--mode", "validate"],
                               capture_output=True, text=True, timeout=30, check=False)
    assert completed.returncode == 0, completed.stderr
