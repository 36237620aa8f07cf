"""Access to the shared conformance corpus and its reference expander
(../shared/conformance/netpol/validate_cases.py), for tests."""

from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path
from types import ModuleType

from netpolicy.conformance.corpus import PodRef, Topology

CORPUS = Path("/work/shared/conformance/netpol")
CASE_FILES = sorted((CORPUS / "cases").glob("*.yaml"))


def reference_expander() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_cases", CORPUS / "validate_cases.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def addresses(topology: Topology) -> dict[PodRef, ipaddress.IPv4Address]:
    """10.244.<namespace index>.<10 + pod index>: one /16 pod CIDR, as the README asks."""
    ips = {}
    ns_index = {ns.name: i for i, ns in enumerate(topology.namespaces)}
    counters: dict[str, int] = {}
    for pod in topology.pods:
        n = counters.get(pod.namespace, 0)
        counters[pod.namespace] = n + 1
        ips[(pod.namespace, pod.name)] = ipaddress.IPv4Address(f"10.244.{ns_index[pod.namespace]}.{10 + n}")
    return ips
