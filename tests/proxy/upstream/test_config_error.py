import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from proxy.config_error import ConfigError, reject_unsupported


def test_str_is_path_colon_reason() -> None:
    assert str(ConfigError("clusters[0].lb_policy", "not supported")) == "clusters[0].lb_policy: not supported"


def test_under_prefixes_the_path() -> None:
    err = ConfigError("choice_count", "too small").under("clusters[2].least_request_lb_config")
    assert err.path == "clusters[2].least_request_lb_config.choice_count"
    assert err.reason == "too small"


def test_config_error_is_a_value_error() -> None:
    assert isinstance(ConfigError("a", "b"), ValueError)


def test_reject_unsupported_names_the_first_set_field() -> None:
    config = Cluster.LeastRequestLbConfig()
    config.slow_start_config.slow_start_window.seconds = 5
    with pytest.raises(ConfigError) as info:
        reject_unsupported(config, "least_request_lb_config", ("choice_count",))
    assert info.value.path == "least_request_lb_config.slow_start_config"


def test_reject_unsupported_accepts_supported_and_unset_fields() -> None:
    config = Cluster.LeastRequestLbConfig()
    config.choice_count.value = 3
    reject_unsupported(config, "least_request_lb_config", ("choice_count",))
