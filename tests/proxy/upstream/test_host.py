import pytest

from proxy.upstream.host import Host


def test_key_is_address_colon_port() -> None:
    assert Host("10.0.0.1", 8080).key == "10.0.0.1:8080"


def test_ipv6_key_is_bracketed() -> None:
    assert Host("::1", 80).key == "[::1]:80"


def test_new_host_is_healthy() -> None:
    assert Host("10.0.0.1", 80).healthy


def test_failed_health_check_makes_host_unhealthy() -> None:
    host = Host("10.0.0.1", 80)
    host.health_check_failed = True
    assert not host.healthy


def test_outlier_ejection_makes_host_unhealthy() -> None:
    host = Host("10.0.0.1", 80)
    host.outlier_ejected = True
    assert not host.healthy


def test_weight_zero_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight"):
        Host("10.0.0.1", 80, weight=0)


def test_hosts_compare_by_identity() -> None:
    assert Host("10.0.0.1", 80) != Host("10.0.0.1", 80)


def test_eds_reported_unhealthy_host_is_unhealthy() -> None:
    host = Host("10.0.0.1", 80, eds_health_failed=True)
    assert not host.healthy


def test_health_flags_read_as_envoys_clusters_page() -> None:
    host = Host("10.0.0.1", 80)
    assert host.health_flags() == "healthy"
    host.health_check_failed = True
    host.outlier_ejected = True
    assert host.health_flags() == "/failed_active_hc/failed_outlier_check"
    host.health_check_failed = False
    host.eds_health_failed = True
    assert host.health_flags() == "/failed_outlier_check/failed_eds_health"
