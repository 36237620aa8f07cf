"""A node's services, driven by the control plane: the ClusterIP table non-meshed pods
reach Services through (`netpolicy.service_table`), and the names the node's DNS
responder answers (`netpolicy.agent.dns`).

Rules (ADS changes run on the agent's datapath thread; DNS lookups read from any thread):
- One ADS response of `tulle.netpolicy.v1.Service` is one change: the new set of
  services is validated in full (a bad one is named in the NACK and changes nothing),
  then applied in one transaction: the first time (per agent process) as a replace of the
  node's `inet tulle_services` table, afterwards as a diff of the changed service ports
  only (`service_table_diff`). Measured (2 cores, shared), 1000 services x 2 ports x 3
  endpoints: a replace takes ~1.5 s to apply, a diff changing two ports ~22 ms (100
  services: a replace ~80 ms). A diff the kernel refuses is retried as a replace.
- The first response of a stream replaces what an earlier stream delivered (deleted
  meanwhile); until the first response, the table an earlier agent left stays in force.
- Names: `<svc>.<ns>.svc.cluster.local` → ClusterIP. The DNS responder expands the
  short forms (`<svc>.<ns>`, `<svc>`) through the asking pod's search path; the mapping
  here is replaced as a whole (an immutable dict swapped in), so readers need no lock.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from netpolicy.service_table import Endpoint, ServicePort, service_table, service_table_diff

log = logging.getLogger("tulle.agent.services")

SERVICE: Final = "type.googleapis.com/tulle.netpolicy.v1.Service"
DOMAIN: Final = "cluster.local"


class Applier(Protocol):
    def apply(self, document: dict[str, Any]) -> None: ...


class ServiceError(ValueError):
    """A Service the agent cannot use; the message names it (sent as the NACK)."""


@dataclass(frozen=True, slots=True)
class NodeService:
    namespace: str
    name: str
    cluster_ip: ipaddress.IPv4Address
    ports: tuple[ServicePort, ...]

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{DOMAIN}"


def node_service(key: str, msg: Any) -> NodeService:
    """The agent's form of one `tulle.netpolicy.v1.Service` message; ServiceError names what is wrong."""
    try:
        cluster_ip = ipaddress.IPv4Address(msg.cluster_ip)
    except ValueError:
        raise ServiceError(f"Service {key}: cluster_ip {msg.cluster_ip!r} is not an IPv4 address") from None
    ports = []
    for i, p in enumerate(msg.ports):
        where = f"Service {key}: ports[{i}]"
        if not 0 < p.port < 65536:
            raise ServiceError(f"{where}.port {p.port} is out of range")
        endpoints = []
        for j, e in enumerate(p.endpoints):
            try:
                ipaddress.IPv4Address(e.ip)
            except ValueError:
                raise ServiceError(f"{where}.endpoints[{j}].ip {e.ip!r} is not an IPv4 address") from None
            if not 0 < e.port < 65536:
                raise ServiceError(f"{where}.endpoints[{j}].port {e.port} is out of range")
            endpoints.append(Endpoint(e.ip, e.port))
        try:
            ports.append(ServicePort(msg.namespace, msg.name, str(cluster_ip), p.port, p.protocol or "TCP",
                                     tuple(endpoints)))
        except ValueError as e:
            raise ServiceError(f"{where}: {e}") from None
    return NodeService(msg.namespace, msg.name, cluster_ip, tuple(ports))


class NodeServices:
    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.services: Mapping[str, NodeService] = {}
        self.names: Mapping[str, ipaddress.IPv4Address] = {}  # FQDN (no trailing dot) -> ClusterIP
        self.last_apply_seconds = 0.0
        self._applied: tuple[ServicePort, ...] | None = None  # what the kernel's table holds

    def on_resources(self, resources: Mapping[str, Any], removed: list[str], replace_all: bool) -> str | None:
        services = {} if replace_all else dict(self.services)
        try:
            for key, msg in resources.items():
                services[key] = node_service(key, msg)
        except ServiceError as e:
            return str(e)
        for key in removed:
            services.pop(key, None)
        ports = tuple(p for s in services.values() for p in s.ports)
        started = time.perf_counter()
        try:
            if self._applied is not None:
                try:
                    self.applier.apply(service_table_diff(self._applied, ports))
                except Exception:
                    log.warning("service table diff refused; replacing the table", exc_info=True)
                    self.applier.apply(service_table(ports))
            else:
                self.applier.apply(service_table(ports))
        except Exception as e:  # the kernel refused: the table in force is unchanged
            log.exception("applying the service table failed")
            return f"service table: {type(e).__name__}: {e}"
        self._applied = ports
        self.last_apply_seconds = time.perf_counter() - started
        self.services = services
        self.names = {s.hostname: s.cluster_ip for s in services.values()}
        log.info("service table: %d services applied in %.1f ms", len(services), self.last_apply_seconds * 1e3)
        return None

    def resolve(self, fqdn: str) -> ipaddress.IPv4Address | None:
        """The ClusterIP of `<svc>.<ns>.svc.cluster.local` (case-insensitive, trailing dot optional)."""
        return self.names.get(fqdn.rstrip(".").lower())
