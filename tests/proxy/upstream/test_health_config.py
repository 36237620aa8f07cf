import pytest
from envoy.config.core.v3.health_check_pb2 import HealthCheck

from proxy.config_error import ConfigError
from proxy.upstream.health import HealthCheckConfig, HttpCheck, TcpCheck
from proxy.upstream.health.check_name import set_health_check_name


def minimal() -> HealthCheck:
    message = HealthCheck()
    message.timeout.seconds = 1
    message.interval.FromMilliseconds(100)
    message.unhealthy_threshold.value = 2
    message.healthy_threshold.value = 1
    return message


def test_http_check_with_envoy_defaults() -> None:
    message = minimal()
    message.http_health_check.path = "/healthz"
    config = HealthCheckConfig.from_proto(message)
    assert (config.timeout, config.interval, config.unhealthy_threshold, config.healthy_threshold) == (1.0, 0.1, 2, 1)
    assert config.no_traffic_interval == 60.0
    assert config.reuse_connection
    assert config.check == HttpCheck(path="/healthz")
    assert isinstance(config.check, HttpCheck) and config.check.is_expected(200) and not config.check.is_expected(204)


def test_http_expected_and_retriable_ranges_are_half_open() -> None:
    message = minimal()
    message.http_health_check.path = "/"
    message.http_health_check.expected_statuses.add(start=200, end=300)
    message.http_health_check.retriable_statuses.add(start=429, end=430)
    check = HealthCheckConfig.from_proto(message).check
    assert isinstance(check, HttpCheck)
    assert check.is_expected(299) and not check.is_expected(300)
    assert check.is_retriable(429)


def test_tcp_payloads_are_hex() -> None:
    message = minimal()
    message.tcp_health_check.send.text = "70696e67"
    message.tcp_health_check.receive.add(text="706f6e67")
    assert HealthCheckConfig.from_proto(message).check == TcpCheck(b"ping", (b"pong",))


def test_tcp_without_payloads_is_connect_only() -> None:
    message = minimal()
    message.tcp_health_check.SetInParent()
    check = HealthCheckConfig.from_proto(message).check
    assert isinstance(check, TcpCheck) and check.connect_only


@pytest.mark.parametrize("field", ["timeout", "interval", "unhealthy_threshold", "healthy_threshold"])
def test_required_fields(field: str) -> None:
    message = minimal()
    message.http_health_check.path = "/"
    message.ClearField(field)
    with pytest.raises(ConfigError, match=rf"health_checks\[0\]\.{field}: is required"):
        HealthCheckConfig.from_proto(message)


def test_grpc_health_check_is_rejected() -> None:
    message = minimal()
    message.grpc_health_check.SetInParent()
    with pytest.raises(ConfigError, match=r"health_checks\[0\]\.grpc_health_check"):
        HealthCheckConfig.from_proto(message)


def test_http2_health_check_is_rejected() -> None:
    message = minimal()
    message.http_health_check.path = "/"
    message.http_health_check.codec_client_type = 1
    with pytest.raises(ConfigError, match=r"http_health_check\.codec_client_type"):
        HealthCheckConfig.from_proto(message)


def test_bad_hex_payload_is_rejected() -> None:
    message = minimal()
    message.tcp_health_check.send.text = "zz"
    with pytest.raises(ConfigError, match=r"tcp_health_check\.send\.text"):
        HealthCheckConfig.from_proto(message)


def test_several_checkers_must_each_have_a_name() -> None:
    first, second = minimal(), minimal()
    first.tcp_health_check.SetInParent()
    second.tcp_health_check.SetInParent()
    set_health_check_name(first, "tcp")
    with pytest.raises(ConfigError, match=r"health check at index 1 is missing a name") as error:
        HealthCheckConfig.from_cluster([first, second])
    assert error.value.path == "health_checks[1].name"


def test_several_checkers_need_distinct_names() -> None:
    first, second = minimal(), minimal()
    first.tcp_health_check.SetInParent()
    second.tcp_health_check.SetInParent()
    set_health_check_name(first, "same")
    set_health_check_name(second, "same")
    with pytest.raises(ConfigError, match="duplicate health check name 'same' at index 1"):
        HealthCheckConfig.from_cluster([first, second])


def test_named_checkers_load_in_order() -> None:
    first, second = minimal(), minimal()
    first.http_health_check.path = "/healthz"
    second.tcp_health_check.SetInParent()
    set_health_check_name(first, "http")
    set_health_check_name(second, "tcp")
    assert [config.name for config in HealthCheckConfig.from_cluster([first, second])] == ["http", "tcp"]
    assert HealthCheckConfig.from_cluster([]) == ()


def two_checks_bootstrap(first_name: str, second_name: str) -> str:
    names = [f"name: {name}, " if name else "" for name in (first_name, second_name)]
    return f"""
static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
    health_checks:
    - {{{names[0]}timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {{path: /h}}}}
    - {{{names[1]}timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {{}}}}
    load_assignment:
      cluster_name: c
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]
"""


def test_a_bootstrap_carries_health_check_names() -> None:
    # HealthCheck.name is newer than the xds-protos release: it travels as field 27
    from proxy.bootstrap import parse_bootstrap

    [cluster] = parse_bootstrap(two_checks_bootstrap("http", "tcp")).clusters
    assert [check.name for check in cluster.health_checks] == ["http", "tcp"]


def test_a_bootstrap_with_an_unnamed_second_check_fails_naming_it() -> None:
    from proxy.bootstrap import parse_bootstrap

    with pytest.raises(ConfigError) as error:
        parse_bootstrap(two_checks_bootstrap("http", ""))
    assert error.value.path == "static_resources.clusters[0].health_checks[1].name"
