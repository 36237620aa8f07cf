"""Whatever arrives on stdin or the socket, the parsers answer with a value or
with the error type of their boundary — never with a crash."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cni.errors import CniError
from cni.netconf import load_netconf
from cni.overlay import NodeListError, parse_nodes
from cni.request import parse_request
from cni.result import Result

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from([
    "cniVersion", "name", "type", "bridge", "mtu", "hairpinMode", "isGateway", "isDefaultGateway",
    "ipam", "dns", "runtimeConfig", "args", "prevResult", "cni.dev/valid-attachments", "agentSocket",
])
VALUES = st.one_of(
    JSON,
    st.sampled_from(["1.1.0", "0.4.0", "10.0.0.0/24", "10.0.0.5", "eth0", "tulle0"]),
    st.fixed_dictionaries({}, optional={"subnet": JSON | st.just("10.1.0.0/24"), "rangeStart": JSON, "routes": JSON}),
)
CONFIGS = st.dictionaries(FIELDS, VALUES, max_size=8).map(lambda d: {"cniVersion": "1.1.0", "name": "n", "type": "t", **d})


@given(CONFIGS)
def test_any_config_loads_or_fails_with_a_cni_error(config: dict[str, Any]) -> None:
    with contextlib.suppress(CniError):
        load_netconf(config)


@given(st.dictionaries(st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"]),
                       st.text(max_size=20)), CONFIGS)
def test_any_environment_parses_or_fails_with_a_cni_error(env: dict[str, str], config: dict[str, Any]) -> None:
    with contextlib.suppress(CniError):
        parse_request(env, config)


@given(JSON)
def test_any_prev_result_decodes_or_fails_with_a_cni_error(data: Any) -> None:
    with contextlib.suppress(CniError):
        Result.from_json(data)


@given(st.lists(st.dictionaries(st.sampled_from(["name", "underlayIp", "podCidr", "vtepMac"]), VALUES), max_size=4) | JSON)
def test_any_node_list_parses_or_fails_with_a_node_list_error(data: Any) -> None:
    with contextlib.suppress(NodeListError):
        parse_nodes(data)
