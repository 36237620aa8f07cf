"""A route's request-header rules compiled into header lines appended in one step.

Theory of operation: what the router adds to a request before its first attempt — the
route's `request_headers_to_add` / `_to_remove` (route, virtual host and route configuration
levels), x-envoy-expected-rq-timeout-ms and, when the virtual host asks for it,
x-envoy-attempt-count — is the same for every request of a route when those rules are
static. Compiled, it is a set of names to drop from the client's headers (rarely present)
and a tuple of header lines to append, so the first attempt's headers are one list extend
rather than a walk through each rule.

Rules: a plan exists only when applying the rules in order is equal to "drop these names,
then append these lines" (the lines' order aside: an overwritten header moves to the end):
every addition is a literal (no `%COMMAND%`) that appends or overwrites-or-adds, no name is
touched twice across levels, and no rule touches a header the connection manager or the
router sets itself (framing, host, the x-forwarded-* headers, x-request-id, Envoy's x-envoy-*
headers). Anything else gets no plan, and the router applies the rules to the header list.
The plan is for requests the router does not take x-envoy-* overrides from (external ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.router.header_mutation import HeaderMutation, static_rules

EXPECTED_TIMEOUT = "x-envoy-expected-rq-timeout-ms"
ATTEMPT_COUNT = "x-envoy-attempt-count"
_OWNED = frozenset(("host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
                    "upgrade", "content-length", "te", "expect", "x-forwarded-for",
                    "x-forwarded-proto", "x-forwarded-host", "x-forwarded-client-cert",
                    "x-request-id"))


@dataclass(frozen=True, slots=True)
class RequestPlan:
    drop: frozenset[str]                 # client header names the rules replace or remove
    lines: tuple[tuple[str, str], ...]   # appended to the request's header list


def compile_request_plan(mutations: tuple[HeaderMutation, ...], expected_timeout: str | None,
                         attempt_count: bool) -> RequestPlan | None:
    """The plan for a route's request mutations (in application order) and a first
    attempt's x-envoy-expected-rq-timeout-ms (None: not sent) and x-envoy-attempt-count;
    None when the rules are not static (see the module's rules)."""
    rules = static_rules(mutations, _owned)
    if rules is None:
        return None
    drop, lines = rules
    if expected_timeout is not None:
        drop.add(EXPECTED_TIMEOUT)
        lines.append((EXPECTED_TIMEOUT, expected_timeout))
    if attempt_count:
        drop.add(ATTEMPT_COUNT)
        lines.append((ATTEMPT_COUNT, "1"))
    return RequestPlan(frozenset(drop), tuple(lines))


def _owned(name: str) -> bool:
    return name in _OWNED or name.startswith("x-envoy-")
