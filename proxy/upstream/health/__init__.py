"""Active health checking: Envoy's HTTP and TCP health checkers.

config.py  HealthCheckConfig, parsed from `core.v3.HealthCheck`
state.py   the sans-IO per-host state machine and the interval rules
prober.py  the asyncio shell: probes hosts on schedule and flips Host.health_check_failed
"""

from proxy.upstream.health.config import HealthCheckConfig, HttpCheck, TcpCheck
from proxy.upstream.health.prober import HealthChecker, HealthCheckStats
from proxy.upstream.health.state import FailureKind, HealthState, Transition, next_interval

__all__ = [
    "FailureKind",
    "HealthCheckConfig",
    "HealthCheckStats",
    "HealthChecker",
    "HealthState",
    "HttpCheck",
    "TcpCheck",
    "Transition",
    "next_interval",
]
