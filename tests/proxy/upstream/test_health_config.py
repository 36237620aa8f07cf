import pytest
from envoy.config.core.v3.health_check_pb2 import HealthCheck

from proxy.config_error import ConfigError
from proxy.upstream.health import HealthCheckConfig, HttpCheck, TcpCheck


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


def test_only_one_checker_per_cluster() -> None:
    first, second = minimal(), minimal()
    first.tcp_health_check.SetInParent()
    second.tcp_health_check.SetInParent()
    with pytest.raises(ConfigError, match=r"health_checks\[1\]"):
        HealthCheckConfig.from_cluster([first, second])
    assert HealthCheckConfig.from_cluster([]) is None
