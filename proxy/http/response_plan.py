"""A route's response-header rules compiled into one filter and one block of bytes.

Theory of operation: what the connection manager does to an upstream response head —
drop hop-by-hop headers, overwrite `server`, the route's `response_headers_to_add` /
`_to_remove` (route, virtual host and route configuration levels) — is the same for every
response of a route when those rules are static. Compiled, it is a set of header names to
drop while copying the upstream's header lines and a block of lines to append, so a
response head is built in one pass over the raw lines without a header object.

Rules: a plan exists only when applying the rules in order is equal to "drop these names,
then append these lines": every addition is a literal (no `%COMMAND%`) that appends or
overwrites-or-adds, no name is touched twice across levels, and no rule touches the headers
the connection manager itself owns (framing, date, server, Envoy's x-envoy-* response
headers). Anything else (ADD_IF_ABSENT, OVERWRITE_IF_EXISTS, substitutions, server
APPEND_IF_ABSENT, always_set_request_id_in_response) gets no plan, and the general path
applies the rules to a header list.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.http.hcm_config import HcmConfig
from proxy.router.header_mutation import HeaderMutation, static_rules

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade"))
SERVICE_TIME = b"x-envoy-upstream-service-time"
_OWNED = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                    "content-length", "date", "server", "x-envoy-upstream-service-time",
                    "x-envoy-attempt-count", "x-request-id"))


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    drop: frozenset[bytes]   # upstream header names (lower-case) not copied downstream
    tail: bytes              # header lines appended to every response head

    def head_parts(self, first_line: bytes,
                   raw: list[tuple[bytes, bytes]]) -> tuple[list[bytes], bool, bool]:
        """The head so far (first line, the upstream lines kept, the tail) as parts to join,
        and whether the upstream sent content-length and date."""
        drop = self.drop
        parts = [first_line]
        framed = dated = False
        for name, value in raw:
            if name in drop:
                continue
            if name == b"content-length":
                framed = True
            elif name == b"date":
                dated = True
            parts += (name, b": ", value, b"\r\n")
        parts.append(self.tail)
        return parts, framed, dated


def compile_response_plan(config: HcmConfig, mutations: tuple[HeaderMutation, ...],
                          attempt_count: bool) -> ResponsePlan | None:
    """The plan for a route's response mutations (in application order) under `config`;
    None when the rules are not static (see the module's rules). `attempt_count`: the
    virtual host's include_attempt_count_in_response, for a first attempt."""
    if config.always_set_request_id_in_response or config.server_header == "APPEND_IF_ABSENT":
        return None
    rules = static_rules(mutations, _OWNED.__contains__)
    if rules is None:
        return None
    drop = set(HOP_BY_HOP) | {name.encode("latin-1") for name in rules[0]}
    lines = [f"{name}: {value}\r\n".encode("latin-1") for name, value in rules[1]]
    if not config.suppress_envoy_headers:
        drop.add(SERVICE_TIME)
    if attempt_count:
        drop.add(b"x-envoy-attempt-count")
        lines.append(b"x-envoy-attempt-count: 1\r\n")
    if config.server_header == "OVERWRITE":
        drop.add(b"server")
        lines.append(f"server: {config.server_name}\r\n".encode("latin-1"))
    return ResponsePlan(frozenset(drop), b"".join(lines))
