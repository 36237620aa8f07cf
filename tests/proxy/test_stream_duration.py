"""A route's gRPC timeouts and stream duration, as Envoy computes them per request."""

from __future__ import annotations

import pytest

from proxy.bootstrap import parse_bootstrap
from proxy.config_error import ConfigError
from proxy.http.grpc_reply import grpc_reply_headers
from proxy.http.headers import Headers
from proxy.http.stream_duration import StreamTimeouts, format_grpc_timeout, parse_grpc_timeout
from tests.proxy.test_bootstrap import bootstrap

ROUTE = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
         ".virtual_hosts[0].routes[0].route")


@pytest.mark.parametrize(("value", "seconds"), [
    ("300m", 0.3), ("2S", 2.0), ("1M", 60.0), ("1H", 3600.0), ("1500u", 0.002), ("1n", 0.001),
    ("99999999m", 99999.999), ("0S", 0.0)])
def test_grpc_timeout_values_are_read_in_their_unit(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "m", "5", "5x", "-5m", "123456789m", "1.5S"])
def test_a_malformed_grpc_timeout_is_ignored(value: str) -> None:
    assert parse_grpc_timeout(value) is None


def test_grpc_timeouts_go_upstream_in_milliseconds() -> None:
    assert format_grpc_timeout(0.2) == "200m"
    assert format_grpc_timeout(2.0) == "2000m"
    assert format_grpc_timeout(200_000.0) == "200000S"


def request(*headers: tuple[str, str]) -> tuple[Headers, set[str]]:
    return Headers(list(headers)), {name for name, _ in headers}


def test_the_grpc_timeout_header_is_capped_then_offset() -> None:
    rule = StreamTimeouts(new_timeouts=True, max_stream_duration=5.0, grpc_header_max=1.0, grpc_header_offset=0.1)
    headers, names = request(("grpc-timeout", "9S"), ("content-type", "application/grpc"))
    assert rule.for_request(headers, names) == pytest.approx(0.9)
    assert headers.get("grpc-timeout") == "900m"


def test_without_grpc_timeout_header_max_the_header_does_not_count() -> None:
    rule = StreamTimeouts(new_timeouts=True, max_stream_duration=5.0)
    headers, names = request(("grpc-timeout", "1S"))
    assert rule.for_request(headers, names) == 5.0


def test_a_plain_request_on_a_duration_route_keeps_the_routes_deadline() -> None:
    rule = StreamTimeouts(new_timeouts=True, max_stream_duration=5.0, grpc_header_max=0.0)
    assert rule.for_request(*request(("accept", "*/*"))) is None


def test_max_grpc_timeout_zero_leaves_the_client_timeout_uncapped() -> None:
    rule = StreamTimeouts(new_timeouts=False, max_grpc_timeout=0.0)
    assert rule.for_request(*request(("content-type", "application/grpc"), ("grpc-timeout", "3M"))) == 180.0
    assert rule.for_request(*request(("content-type", "application/grpc"))) == 0.0   # none: infinite
    assert rule.for_request(*request(("content-type", "application/grpc-web"), ("grpc-timeout", "1S"))) is None


def test_a_grpc_local_reply_carries_the_status_and_message() -> None:
    assert grpc_reply_headers(503, b"no healthy upstream", ()) == (
        ("content-type", "application/grpc"), ("grpc-status", "14"), ("grpc-message", "no healthy upstream"))
    assert grpc_reply_headers(504, b"t", (), "4")[1] == ("grpc-status", "4")


def route_with(extra: str) -> str:
    return bootstrap().replace("route: {cluster: a}", "route: {cluster: a, " + extra + "}")


def test_istio_route_timeouts_are_accepted() -> None:
    config = parse_bootstrap(route_with("timeout: 0s, max_grpc_timeout: 0s"))
    assert config.listeners[0].http is not None
    config = parse_bootstrap(route_with("timeout: 5s, max_stream_duration: {max_stream_duration: 5s, "
                                        "grpc_timeout_header_max: 5s}"))
    assert config.listeners[0].http is not None


@pytest.mark.parametrize(("extra", "field"), [
    ("max_stream_duration: {max_stream_duration: -1s}", "max_stream_duration.max_stream_duration"),
    ("max_stream_duration: {grpc_timeout_header_max: -1s}", "max_stream_duration.grpc_timeout_header_max"),
    ("max_stream_duration: {grpc_timeout_header_offset: -1s}", "max_stream_duration.grpc_timeout_header_offset"),
    ("max_grpc_timeout: -3s", "max_grpc_timeout"),
])
def test_a_negative_duration_is_refused_naming_the_field(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_bootstrap(route_with(extra))
    assert error.value.path == f"{ROUTE}.{field}"
