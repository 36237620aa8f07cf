"""Network configuration, CNI environment and Result shapes, without I/O."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cni.errors import CniError, ErrorCode
from cni.netconf import load_netconf
from cni.request import decode_config, parse_cni_args, parse_request
from cni.result import Interface, IPConfig, Result, Route

BASE: dict[str, Any] = {"cniVersion": "1.1.0", "name": "net", "type": "tulle-cni"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


def test_defaults_make_a_gateway_bridge_named_tulle0() -> None:
    conf = load_netconf(BASE)
    assert (conf.bridge, conf.is_gateway, conf.is_default_gateway, conf.hairpin_mode, conf.mtu) == ("tulle0", True, True, False, None)


def test_runtime_injected_fields_are_accepted() -> None:
    conf = load_netconf({**BASE, "runtimeConfig": {"ips": ["10.0.0.5/24"], "portMappings": []},
                         "args": {"cni": {"ips": ["10.0.0.6"]}}, "capabilities": {"ips": True}})
    assert conf.runtime_ips == (ipaddress.IPv4Address("10.0.0.5"), ipaddress.IPv4Address("10.0.0.6"))


def test_unknown_field_is_refused_with_its_key_and_value() -> None:
    with pytest.raises(CniError) as err:
        load_netconf({**BASE, "bridgee": "br0"})
    assert err.value.code == ErrorCode.UNSUPPORTED_FIELD
    assert "'bridgee'" in err.value.msg and "'br0'" in err.value.msg


def test_is_default_gateway_needs_is_gateway() -> None:
    with pytest.raises(CniError) as err:
        load_netconf({**BASE, "isGateway": False, "isDefaultGateway": True})
    assert "isDefaultGateway" in err.value.msg


def test_ipv6_subnet_is_refused() -> None:
    with pytest.raises(CniError) as err:
        load_netconf({**BASE, "ipam": {"subnet": "fd00::/64"}})
    assert "ipam.subnet" in err.value.msg


def test_bad_route_names_its_index() -> None:
    with pytest.raises(CniError) as err:
        load_netconf({**BASE, "ipam": {"routes": [{"dst": "10.0.0.0/8"}, {"dst": "nope"}]}})
    assert "ipam.routes[1]" in err.value.msg


def test_malformed_json_is_a_decode_failure() -> None:
    with pytest.raises(CniError) as err:
        decode_config(b"{nope")
    assert err.value.code == ErrorCode.DECODE_FAILURE


def test_requested_ip_from_cni_args_joins_runtime_config_ips() -> None:
    req = parse_request({**ENV, "CNI_ARGS": "IgnoreUnknown=1;IP=10.0.0.9"}, {**BASE, "runtimeConfig": {"ips": ["10.0.0.8"]}})
    assert req.requested_ips == (ipaddress.IPv4Address("10.0.0.8"), ipaddress.IPv4Address("10.0.0.9"))


def test_pod_identity_comes_from_kubernetes_cni_args() -> None:
    req = parse_request({**ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"}, BASE)
    assert (req.pod_namespace, req.pod_name) == ("shop", "cart-1")


def test_del_tolerates_an_empty_netns() -> None:
    req = parse_request({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, BASE)
    assert req.netns == ""


def test_check_needs_prev_result() -> None:
    with pytest.raises(CniError) as err:
        parse_request({**ENV, "CNI_COMMAND": "CHECK"}, BASE)
    assert "prevResult" in err.value.msg


def test_gc_and_status_need_no_container() -> None:
    assert parse_request({"CNI_COMMAND": "STATUS"}, BASE).container_id == ""


def test_cni_args_without_equals_is_refused() -> None:
    with pytest.raises(CniError) as err:
        parse_cni_args("A=1;B")
    assert err.value.code == ErrorCode.INVALID_ENVIRONMENT


RESULT = Result(
    interfaces=(Interface("br"), Interface("veth", "aa:bb:cc:dd:ee:ff"), Interface("eth0", "11:22:33:44:55:66", "/run/netns/p")),
    ips=(IPConfig(ipaddress.IPv4Interface("10.0.0.2/24"), ipaddress.IPv4Address("10.0.0.1"), 2),),
    routes=(Route(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("10.0.0.1")),),
)


def test_result_1x_has_no_ip_version_field() -> None:
    assert RESULT.to_json("1.1.0")["ips"] == [{"interface": 2, "address": "10.0.0.2/24", "gateway": "10.0.0.1"}]


def test_result_040_tags_ips_with_their_version() -> None:
    assert RESULT.to_json("0.4.0")["ips"][0]["version"] == "4"


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_result_round_trips_through_json(version: str) -> None:
    assert Result.from_json(RESULT.to_json(version)) == RESULT


def test_prev_result_with_a_bad_interface_index_is_refused() -> None:
    bad = RESULT.to_json("1.1.0")
    bad["ips"][0]["interface"] = 7
    with pytest.raises(CniError) as err:
        Result.from_json(bad)
    assert "prevResult.ips[0].interface" in err.value.msg
