"""What the connection manager works out once per route rather than once per request.

Theory of operation: a route's header mutation levels (route, virtual host, route
configuration, in application order), their compiled forms for requests and responses
(proxy/http/request_plan.py, proxy/http/response_plan.py), its retry policy (the route's,
else the virtual host's), the response statuses that policy retries on a first attempt,
and its timeouts do not change between requests, so the first request of a route computes
them into a `RoutePlan` and the others reuse it. A plan keeps its route table and route; a
plan whose table was replaced (RDS) is not used again.
"""

from __future__ import annotations

from proxy.http.attempt import GLOBAL_TIMEOUT, IDLE_TIMEOUT
from proxy.http.hcm_config import HcmConfig
from proxy.http.request_plan import compile_request_plan
from proxy.http.response_plan import compile_response_plan
from proxy.http.retry import PER_TRY_IDLE_TIMEOUT, PER_TRY_TIMEOUT, is_retriable
from proxy.http.stream_duration import DURATION_TIMEOUT
from proxy.router.route import ForwardAction
from proxy.router.route_table import RouteSelection, RouteTable


class RoutePlan:
    __slots__ = ("deadline_delay", "deadline_kind", "expected_timeout", "first_deadline", "idle", "per_try",
                 "plain", "policy", "request_mutations", "request_plan", "response_mutations", "response_plan",
                 "retry_statuses", "route", "stream_duration", "stream_timeouts", "table", "timeout")

    def __init__(self, config: HcmConfig, table: RouteTable, selection: RouteSelection) -> None:
        route = selection.route
        vhost = selection.virtual_host
        self.table = table
        self.route = route
        self.request_mutations = table.request_mutations(selection)
        self.response_mutations = table.response_mutations(selection)
        self.response_plan = compile_response_plan(config, self.response_mutations,
                                                   vhost.include_attempt_count_in_response)
        action = route.action
        if isinstance(action, ForwardAction):
            self.policy = action.retry_policy or vhost.retry_policy
            self.timeout = action.timeout
            self.idle = (action.idle_timeout if action.idle_timeout is not None
                         else config.stream_idle_timeout)
            # no hash policy and no host or path rewrite: nothing for the router to work out
            # per request beyond the route's header lines
            self.plain = not (action.hash_policy or action.host_rewrite_literal
                              or action.prefix_rewrite is not None or action.regex_rewrite is not None)
        else:
            self.policy, self.timeout, self.idle, self.plain = None, 0.0, 0.0, False
        # the request's own deadline (the route timeout, or with max_stream_duration the
        # stream's duration, which replaces it: proxy/http/stream_duration.py)
        self.stream_timeouts = action.stream_timeouts if isinstance(action, ForwardAction) else None
        self.deadline_delay, self.deadline_kind = self.timeout, GLOBAL_TIMEOUT
        if self.stream_timeouts is not None and self.stream_timeouts.new_timeouts:
            self.timeout = 0.0
            self.deadline_delay = self.stream_timeouts.max_stream_duration
            self.deadline_kind = DURATION_TIMEOUT
        # the connection manager's max_stream_duration, unless the route sets its own (0.0: none)
        self.stream_duration = (config.max_stream_duration
                                if self.stream_timeouts is None or not self.stream_timeouts.new_timeouts
                                else 0.0)
        self.per_try = self.policy.per_try_timeout if self.policy is not None else 0.0
        # a first attempt's deadline, from the request's start: the nearest of the request's
        # own, per-try, per-try idle and stream idle deadlines, and its kind (0.0: none)
        self.first_deadline = first_deadline(self.deadline_delay, self.per_try, self.idle,
                                             self.deadline_kind,
                                             self.policy.per_try_idle_timeout if self.policy is not None else 0.0,
                                             self.stream_duration)
        # x-envoy-expected-rq-timeout-ms of a first attempt under these timeouts
        self.expected_timeout = expected_timeout(self.timeout, self.per_try, 0.0, 0.0, 1)
        self.request_plan = compile_request_plan(
            self.request_mutations,
            None if config.suppress_envoy_headers else self.expected_timeout,
            vhost.include_request_attempt_count)
        # the response statuses a first attempt is retried on (a set: one test per response)
        policy = self.policy
        self.retry_statuses = (frozenset(status for status in range(100, 1000)
                                         if is_retriable(policy, status))
                               if policy is not None and policy.num_retries > 0 else frozenset())


def expected_timeout(timeout: float, per_try: float, deadline: float, now: float,
                     number: int) -> str | None:
    """x-envoy-expected-rq-timeout-ms: the per-try timeout if it is the tighter bound, else
    the route timeout (what remains of it on a retry); None without either."""
    if timeout > 0:
        remaining = timeout if number == 1 else max(deadline - now, 0.0)
        if per_try > 0 and per_try < remaining:
            return str(int(per_try * 1000))
        return str(int(remaining * 1000))
    if per_try > 0:
        return str(int(per_try * 1000))
    return None


def first_deadline(timeout: float, per_try: float, idle: float,
                   timeout_kind: str = GLOBAL_TIMEOUT, per_try_idle: float = 0.0,
                   stream_duration: float = 0.0) -> tuple[float, str]:
    """The delay from a request's start to its first attempt's deadline, and its kind."""
    delay, kind = (timeout, timeout_kind) if timeout > 0 else (0.0, timeout_kind)
    if stream_duration > 0 and (not delay or stream_duration < delay):
        delay, kind = stream_duration, DURATION_TIMEOUT
    if per_try > 0 and (not delay or per_try < delay):
        delay, kind = per_try, PER_TRY_TIMEOUT
    if per_try_idle > 0 and (not delay or per_try_idle < delay):
        delay, kind = per_try_idle, PER_TRY_IDLE_TIMEOUT
    if idle > 0 and (not delay or idle < delay):
        delay, kind = idle, IDLE_TIMEOUT
    return delay, kind
