"""The timers of a response body in flight: which deadline bounds it once its head has gone
downstream, and what the proxy does when that deadline comes.

Rules (Envoy 1.40), once the response head is out:
- the route's own deadline keeps running from the request's arrival: its `timeout`, or the
  route's `max_stream_duration` that replaces it (proxy/http/stream_duration.py), else the
  connection manager's `common_http_protocol_options.max_stream_duration`;
- the cluster's `common_http_protocol_options.max_stream_duration` keeps running from the
  attempt's start;
- the stream idle timeout (route `idle_timeout`, else the connection manager's
  `stream_idle_timeout`) and the retry policy's `per_try_idle_timeout` restart with every
  body chunk the upstream sends;
- a per-try timeout does not apply any more (it bounds the wait for the head);
- when the nearest runs out, the upstream request is reset and, the head being out, all
  HTTP/1.1 can do is close the client's connection (after the delayed close, as Envoy
  closes it): the client sees a truncated body. Nothing is retried. What the access log
  and the stats say (`charge_cut`): route timeout UT; stream idle SI and
  `downstream_rq_idle_timeout`; per-try idle UT (details upstream_per_try_idle_timeout)
  and `upstream_rq_per_try_idle_timeout`; the cluster's duration UMSDR and
  `upstream_rq_max_duration_reached`; the stream's duration no flag (details
  max_duration_timeout) and `downstream_rq_max_duration_reached`.

Theory of operation: a body in flight has one deadline, the nearest of these
(`body_deadline`), filed once when the body starts streaming; a chunk does not touch it.
The relay notes the loop time of the latest chunk, and when the deadline comes
`body_deadline` is asked again from that time: if the stream moved since, the (idle)
deadline is filed anew from its latest chunk, else the body is cut. A streaming body thus
costs a clock read per chunk and a timer per idle period, never a timer per chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.http.attempt import IDLE_TIMEOUT, UPSTREAM_DURATION
from proxy.http.retry import PER_TRY_IDLE_TIMEOUT
from proxy.http.stream_duration import DURATION_TIMEOUT

if TYPE_CHECKING:
    from proxy.http.stream import Stream
    from proxy.stats import HttpStats

PER_TRY_IDLE_DETAILS = "upstream_per_try_idle_timeout"
DURATION_DETAILS = "max_duration_timeout"


def body_deadline(stream: Stream, started: float, active: float) -> tuple[float, str]:
    """The nearest deadline (loop time, 0.0: none) of a response body relayed for the
    attempt begun at `started`, whose latest upstream progress was at `active`, and its kind."""
    plan = stream.plan
    when, kind = stream.deadline, plan.deadline_kind
    duration = plan.stream_duration
    if duration > 0 and (not when or stream.start + duration < when):
        when, kind = stream.start + duration, DURATION_TIMEOUT
    idle = plan.idle
    if idle > 0 and (not when or active + idle < when):
        when, kind = active + idle, IDLE_TIMEOUT
    policy = stream.policy
    if policy is not None:
        per_try_idle = policy.per_try_idle_timeout
        if per_try_idle > 0 and (not when or active + per_try_idle < when):
            when, kind = active + per_try_idle, PER_TRY_IDLE_TIMEOUT
    upstream = stream.cluster.max_stream_duration
    if upstream > 0 and (not when or started + upstream < when):
        when, kind = started + upstream, UPSTREAM_DURATION
    return when, kind


def charge_cut(stream: Stream, kind: str, stats: HttpStats) -> None:
    """The flags, details and counters of a response body cut by the deadline `kind`."""
    if kind == IDLE_TIMEOUT:
        stream.flags = "SI"
        stats.downstream_rq_idle_timeout += 1
    elif kind == PER_TRY_IDLE_TIMEOUT:
        stream.flags = "UT"
        stream.details = PER_TRY_IDLE_DETAILS
        stream.cluster.stats.upstream_rq_per_try_idle_timeout += 1
    elif kind == UPSTREAM_DURATION:
        stream.flags = "UMSDR"
        stream.cluster.stats.upstream_rq_max_duration_reached += 1
    elif kind == DURATION_TIMEOUT:
        stream.details = DURATION_DETAILS
        stats.downstream_rq_max_duration_reached += 1
    else:
        stream.flags = "UT"
