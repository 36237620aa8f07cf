"""One upstream endpoint of a cluster, and the per-request state the balancers read.

Rules:
- A host is identified by (address, port); `key` ("address:port") is what hash
  policies and stats use, and it is fixed for the life of the object.
- `healthy` is the conjunction Envoy uses for routing: not failed by active health
  checking, not ejected by outlier detection, and not reported unhealthy by the
  control plane (EDS health_status UNHEALTHY, DRAINING or TIMEOUT: Envoy's
  FAILED_EDS_HEALTH). Degraded hosts do not exist here.
- The object is mutable on purpose: the router bumps `active_requests`, the
  health checker and the outlier detector flip their flags, and a HostSet keeps the
  same object across EDS/DNS updates so those counters and flags survive (the
  configured weight, priority and EDS health are taken from each update).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Host:
    address: str
    port: int
    weight: int = 1
    locality_priority: int = 0
    active_requests: int = 0
    # Envoy's per-host counters (admin /clusters): requests with an outcome, split by it
    # (5xx, resets, timeouts and connect failures are errors; `rq_total` is their sum),
    # and connections opened
    rq_success: int = 0
    rq_error: int = 0
    rq_timeout: int = 0   # of the errors, route and per-try timeouts (Envoy counts both)
    cx_total: int = 0
    cx_connect_fail: int = 0
    health_check_failed: bool = False
    outlier_ejected: bool = False
    eds_health_failed: bool = False  # set from the endpoint's health_status
    last_hc_pass_time: float | None = None  # when a failed host last passed a health check (slow start)
    health_check_port: int | None = None  # endpoint.health_check_config.port_value; None: `port`
    locality: str = ""  # the LocalityLbEndpoints it came from (any stable name)
    locality_weight: int = 0  # that LocalityLbEndpoints' load_balancing_weight (0: none)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"host {self.address}:{self.port}: weight must be >= 1, got {self.weight}")
        self.key = f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @property
    def rq_total(self) -> int:
        return self.rq_success + self.rq_error

    @property
    def healthy(self) -> bool:
        return not (self.health_check_failed or self.outlier_ejected or self.eds_health_failed)

    def health_flags(self) -> str:
        """Envoy's /clusters `health_flags` text: "healthy", or the failed flags in
        Envoy's order, e.g. "/failed_active_hc/failed_outlier_check"."""
        if self.healthy:
            return "healthy"
        flags = ""
        if self.health_check_failed:
            flags += "/failed_active_hc"
        if self.outlier_ejected:
            flags += "/failed_outlier_check"
        if self.eds_health_failed:
            flags += "/failed_eds_health"
        return flags

    def __repr__(self) -> str:
        flags = "" if self.healthy else " unhealthy"
        return f"Host({self.key} w={self.weight}{flags})"
