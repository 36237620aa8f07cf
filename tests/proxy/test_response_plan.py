"""A route's compiled response plan agrees with applying its header rules one by one."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from proxy.http.hcm_config import HcmConfig
from proxy.http.headers import Headers
from proxy.http.response_plan import compile_response_plan
from proxy.router.header_mutation import (
    ADD_IF_ABSENT,
    APPEND_IF_EXISTS_OR_ADD,
    OVERWRITE_IF_EXISTS,
    OVERWRITE_IF_EXISTS_OR_ADD,
    HeaderAddition,
    HeaderMutation,
)

HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")


@dataclass
class Context:
    downstream_remote: tuple[str, int] = ("10.0.0.7", 40000)
    downstream_local: tuple[str, int] = ("127.0.0.1", 10000)
    request_headers: Headers = field(default_factory=Headers)


def general(config: HcmConfig, levels: tuple[HeaderMutation, ...], upstream: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What the connection manager's general path does to the same head."""
    headers = Headers(list(upstream))
    headers.remove_all(frozenset(HOP_BY_HOP))
    headers.set("x-envoy-upstream-service-time", "0")
    for level in levels:
        level.apply(headers, Context())
    headers.set("server", config.server_name)
    return sorted(line for line in headers.items if line[0] != "x-envoy-upstream-service-time")


def planned(config: HcmConfig, levels: tuple[HeaderMutation, ...], upstream: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    plan = compile_response_plan(config, levels, attempt_count=False)
    if plan is None:
        return None
    raw = [(name.encode(), value.encode()) for name, value in upstream]
    parts, _, _ = plan.head_parts(b"HTTP/1.1 200 OK\r\n", raw)
    text = b"".join(parts[1:]).decode()
    return sorted((name, value) for name, _, value in
                  (line.partition(": ") for line in text.split("\r\n") if line))


NAMES = st.sampled_from(["x-a", "x-b", "x-c", "connection", "server", "content-type"])
ADDITIONS = st.builds(HeaderAddition, name=st.sampled_from(["x-a", "x-b", "x-c"]),
                      parts=st.sampled_from([("1",), ("2",), ("",)]),
                      action=st.sampled_from([APPEND_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS_OR_ADD]),
                      keep_empty_value=st.booleans())
LEVELS = st.lists(st.builds(HeaderMutation, remove=st.lists(st.sampled_from(["x-a", "x-b", "x-c"]),
                                                              max_size=2).map(tuple),
                            add=st.lists(ADDITIONS, max_size=3).map(tuple)), max_size=3).map(tuple)
UPSTREAM = st.lists(st.tuples(NAMES, st.sampled_from(["u", "v"])), max_size=6)


@given(LEVELS, UPSTREAM)
def test_a_plan_when_there_is_one_gives_the_lines_the_rules_give(levels: tuple[HeaderMutation, ...],
                                                                  upstream: list[tuple[str, str]]) -> None:
    config = HcmConfig(stat_prefix="t", route_table=None)
    result = planned(config, levels, upstream)
    if result is not None:
        assert result == general(config, levels, upstream)


def test_literal_additions_and_removals_compile() -> None:
    levels = (HeaderMutation(remove=("x-gone",), add=(HeaderAddition("x-proxied", ("yes",)),)),)
    plan = compile_response_plan(HcmConfig(stat_prefix="t", route_table=None), levels, attempt_count=False)
    assert plan is not None
    assert b"x-gone" in plan.drop and b"connection" in plan.drop
    assert plan.tail == b"x-proxied: yes\r\nserver: envoy\r\n"


def test_a_substitution_has_no_plan() -> None:
    levels = (HeaderMutation(add=(HeaderAddition("x-peer", (lambda ctx: "a",)),)),)
    assert compile_response_plan(HcmConfig(stat_prefix="t", route_table=None), levels, attempt_count=False) is None


def test_conditional_actions_have_no_plan() -> None:
    for action in (ADD_IF_ABSENT, OVERWRITE_IF_EXISTS):
        levels = (HeaderMutation(add=(HeaderAddition("x-a", ("1",), action),)),)
        assert compile_response_plan(HcmConfig(stat_prefix="t", route_table=None), levels, attempt_count=False) is None


def test_request_id_echo_has_no_plan() -> None:
    config = HcmConfig(stat_prefix="t", route_table=None, always_set_request_id_in_response=True)
    assert compile_response_plan(config, (), attempt_count=False) is None


def test_first_attempt_count_is_part_of_the_tail() -> None:
    plan = compile_response_plan(HcmConfig(stat_prefix="t", route_table=None), (), attempt_count=True)
    assert plan is not None
    assert b"x-envoy-attempt-count: 1\r\n" in plan.tail
