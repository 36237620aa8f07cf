"""The connection manager fields Istio sets (timeouts, drain, header-name rules): accepted
with Envoy's meaning, and bad values refused naming the field."""

from __future__ import annotations

import pytest

from proxy.bootstrap import parse_bootstrap
from proxy.config_error import ConfigError
from proxy.http.hcm_config import HcmConfig
from tests.proxy.test_bootstrap import bootstrap

HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def hcm(extra: str) -> HcmConfig:
    config = parse_bootstrap(bootstrap(hcm_extra=extra)).listeners[0].http
    assert config is not None
    return config


def test_istio_connection_manager_fields_are_accepted() -> None:
    config = hcm("\n            ".join((
        "request_headers_timeout: 2s", "request_timeout: 30s", "drain_timeout: 3s",
        "delayed_close_timeout: 0s", "stream_idle_timeout: 0s",
        "common_http_protocol_options: {idle_timeout: 60s, max_connection_duration: 600s, "
        "headers_with_underscores_action: REJECT_REQUEST}")))
    assert (config.request_headers_timeout, config.request_timeout, config.drain_timeout) == (2.0, 30.0, 3.0)
    assert (config.idle_timeout, config.max_connection_duration, config.stream_idle_timeout) == (60.0, 600.0, 0.0)
    assert config.headers_with_underscores == "REJECT_REQUEST"


def test_unset_fields_have_envoys_defaults() -> None:
    config = hcm("")
    assert (config.request_headers_timeout, config.request_timeout, config.max_connection_duration) == (0, 0, 0)
    assert (config.drain_timeout, config.idle_timeout, config.headers_with_underscores) == (5.0, 3600.0, "ALLOW")
    assert config.delayed_close_timeout == 1.0


@pytest.mark.parametrize(("extra", "field"), [
    ("request_headers_timeout: -1s", "request_headers_timeout"),
    ("request_timeout: -0.5s", "request_timeout"),
    ("drain_timeout: -2s", "drain_timeout"),
    ("stream_idle_timeout: -1s", "stream_idle_timeout"),
    ("common_http_protocol_options: {max_connection_duration: -1s}",
     "common_http_protocol_options.max_connection_duration"),
    ("common_http_protocol_options: {idle_timeout: -1s}", "common_http_protocol_options.idle_timeout"),
    ("delayed_close_timeout: -1s", "delayed_close_timeout"),
    ("common_http_protocol_options: {max_stream_duration: -1s}", "common_http_protocol_options.max_stream_duration"),
])
def test_a_bad_value_is_refused_naming_the_field(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        hcm(extra)
    assert error.value.path == f"{HCM}.{field}"


@pytest.mark.parametrize("drain_type", ["DEFAULT", "MODIFY_ONLY"])
def test_a_listeners_drain_type_is_kept(drain_type: str) -> None:
    text = bootstrap().replace("      filter_chains:", f"      drain_type: {drain_type}\n      filter_chains:", 1)
    assert parse_bootstrap(text).listeners[0].drain_type == drain_type


def test_a_listener_drains_by_default() -> None:
    assert parse_bootstrap(bootstrap()).listeners[0].drain_type == "DEFAULT"
