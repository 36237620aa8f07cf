"""Hash cookies that the proxy generates (a route's cookie hash_policy with a `ttl`).

Rules (Envoy 1.40's router): when a request lacks the policy's cookie and the policy has a
`ttl`, the proxy makes the cookie's value itself, hashes the request by it, and sets it on
the upstream's response (not on local replies):

    Set-Cookie: NAME="VALUE"[; Max-Age=TTL][; Path=PATH][; ATTR[=VALUE]]...; HttpOnly

VALUE is the 16 hex digits of xxHash64 of the downstream connection's remote address then
its local address ("10.0.0.9:5555" + "10.0.0.1:80"): the same on every request of one
connection, so racing requests agree. Max-Age is left out when the ttl is 0 (a session
cookie). A client that sends the cookie back (quoted or not) is hashed by the same value,
so it sticks to the same upstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xxhash

from proxy.http.route_plan import RoutePlan

if TYPE_CHECKING:
    from proxy.http.stream import Stream
    from proxy.router.route import HashPolicy


def _address(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cookie_value(remote: tuple[str, int], local: tuple[str, int]) -> str:
    return f"{xxhash.xxh64_intdigest((_address(remote) + _address(local)).encode()):016x}"


def set_cookie_line(policy: HashPolicy, value: str) -> str:
    parts = [f'{policy.name}="{value}"']
    if policy.ttl:
        parts.append(f"Max-Age={policy.ttl}")
    if policy.path:
        parts.append(f"Path={policy.path}")
    parts += [f"{name}={attribute}" if attribute else name for name, attribute in policy.attributes]
    parts.append("HttpOnly")
    return "; ".join(parts)


def generate(stream: Stream, policy: HashPolicy) -> str:
    """The cookie's value for this request; its Set-Cookie goes on the response head, which
    is then built by ConnectionManager.commit_head (not the route's precompiled plan)."""
    value = cookie_value(stream.downstream_remote, stream.downstream_local)
    stream.set_cookie = set_cookie_line(policy, value)
    if stream.plan.response_plan is not None:
        # a plan of this request's own (a fresh one, not a copy: copy.copy cannot copy a
        # mypyc-compiled class, whose constructor takes arguments)
        plan = stream.plan = RoutePlan(stream.conn.manager.config, stream.plan.table,
                                       stream.selection)
        plan.response_plan = None
    return value
