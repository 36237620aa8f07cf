"""A route's compiled request plan agrees with applying its header rules one by one."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from proxy.http.headers import Headers
from proxy.http.request_plan import compile_request_plan
from proxy.router.header_mutation import (
    ADD_IF_ABSENT,
    APPEND_IF_EXISTS_OR_ADD,
    OVERWRITE_IF_EXISTS,
    OVERWRITE_IF_EXISTS_OR_ADD,
    HeaderAddition,
    HeaderMutation,
)


@dataclass
class Context:
    downstream_remote: tuple[str, int] = ("10.0.0.7", 40000)
    downstream_local: tuple[str, int] = ("127.0.0.1", 10000)
    request_headers: Headers = field(default_factory=Headers)


def general(levels: tuple[HeaderMutation, ...], client: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What the router's general path does to the same headers on a first attempt."""
    headers = Headers(list(client))
    for level in levels:
        level.apply(headers, Context())
    headers.set("x-envoy-attempt-count", "1")
    headers.set("x-envoy-expected-rq-timeout-ms", "15000")
    return sorted(headers.items)


def planned(levels: tuple[HeaderMutation, ...], client: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    plan = compile_request_plan(levels, "15000", attempt_count=True)
    if plan is None:
        return None
    headers = Headers(list(client))
    headers.remove_all(plan.drop)
    headers.items += plan.lines
    return sorted(headers.items)


NAMES = st.sampled_from(["x-a", "x-b", "x-c", "x-envoy-attempt-count", "user-agent"])
ADDITIONS = st.builds(HeaderAddition, name=st.sampled_from(["x-a", "x-b", "x-c"]),
                      parts=st.sampled_from([("1",), ("2",), ("",)]),
                      action=st.sampled_from([APPEND_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS_OR_ADD]),
                      keep_empty_value=st.booleans())
LEVELS = st.lists(st.builds(HeaderMutation, remove=st.lists(st.sampled_from(["x-a", "x-b", "x-c"]),
                                                              max_size=2).map(tuple),
                            add=st.lists(ADDITIONS, max_size=3).map(tuple)), max_size=3).map(tuple)
CLIENT = st.lists(st.tuples(NAMES, st.sampled_from(["u", "v"])), max_size=6)


@given(LEVELS, CLIENT)
def test_a_plan_when_there_is_one_gives_the_headers_the_rules_give(
        levels: tuple[HeaderMutation, ...], client: list[tuple[str, str]]) -> None:
    result = planned(levels, client)
    if result is not None:
        assert result == general(levels, client)


def test_literal_additions_and_removals_compile_to_a_drop_set_and_lines() -> None:
    levels = (HeaderMutation(remove=("x-gone",), add=(HeaderAddition("x-route", ("bench",)),)),)
    plan = compile_request_plan(levels, "10000", attempt_count=False)
    assert plan is not None
    assert plan.drop == {"x-gone", "x-envoy-expected-rq-timeout-ms"}
    assert plan.lines == (("x-route", "bench"), ("x-envoy-expected-rq-timeout-ms", "10000"))


def test_without_a_timeout_no_expected_timeout_line_is_added() -> None:
    plan = compile_request_plan((), None, attempt_count=False)
    assert plan is not None
    assert plan.lines == () and plan.drop == frozenset()


def test_a_substitution_has_no_plan() -> None:
    levels = (HeaderMutation(add=(HeaderAddition("x-peer", (lambda ctx: "a",)),)),)
    assert compile_request_plan(levels, "15000", attempt_count=False) is None


def test_conditional_actions_have_no_plan() -> None:
    for action in (ADD_IF_ABSENT, OVERWRITE_IF_EXISTS):
        levels = (HeaderMutation(add=(HeaderAddition("x-a", ("1",), action),)),)
        assert compile_request_plan(levels, "15000", attempt_count=False) is None


def test_rules_on_headers_the_proxy_sets_itself_have_no_plan() -> None:
    for name in ("x-forwarded-proto", "x-request-id", "x-envoy-retry-on", "host"):
        additions = (HeaderMutation(add=(HeaderAddition(name, ("1",)),)),)
        removals = (HeaderMutation(remove=(name,)),)
        assert compile_request_plan(additions, "15000", attempt_count=False) is None
        assert compile_request_plan(removals, "15000", attempt_count=False) is None
