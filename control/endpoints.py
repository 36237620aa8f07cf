"""A Service's Endpoints, computed from its selector and the Pods (pure; the controller
stores the result).

Rules (Kubernetes' endpoints controller):
- Only a Service with a non-empty selector has managed Endpoints; without one, the
  user (or an agent) writes them, and Tulle leaves them alone.
- A Pod backs the Service when it is in the Service's namespace, its labels match the
  selector, it has `status.podIP`, it is not finished (phase Succeeded or Failed) and
  not being deleted. A Pod applied with `status.podIP` and no node is a workload outside
  any Tulle node (Istio's WorkloadEntry): it is taken as is.
- A Pod is ready unless its `Ready` condition says "False" (a Pod applied without
  conditions is ready); unready Pods go to `notReadyAddresses`, unless the Service
  sets `publishNotReadyAddresses`.
- Each Service port's `targetPort` (default: `port`) resolves per Pod: a number as is,
  a name through the Pod's container ports of that name and protocol. A Pod that
  resolves none of a Service's ports is left out.
- Pods that resolve to the same ports share a subset. Subsets, addresses and ports are
  sorted, so the same inputs always give the same document (and no spurious writes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

Object = dict[str, Any]

PortKey = tuple[tuple[str, int, str], ...]


def selects_pods(service: Mapping[str, Any]) -> bool:
    spec = service.get("spec") or {}
    return bool(spec.get("selector")) and spec.get("type") != "ExternalName"


def _is_ready(pod: Mapping[str, Any]) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") != "False"
    return True


def _container_port(pod: Mapping[str, Any], name: str, protocol: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def _resolve_ports(service_ports: Iterable[Mapping[str, Any]], pod: Mapping[str, Any]) -> PortKey:
    resolved = []
    for port in service_ports:
        protocol = port.get("protocol", "TCP")
        target = port.get("targetPort", port["port"])
        number = _container_port(pod, target, protocol) if isinstance(target, str) else int(target)
        if number is not None:
            resolved.append((port.get("name", ""), number, protocol))
    return tuple(sorted(resolved))


def backs(service: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether `pod` is one of `service`'s endpoints (ready or not)."""
    meta, pod_meta = service["metadata"], pod["metadata"]
    if pod_meta.get("namespace") != meta.get("namespace") or pod_meta.get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    labels = pod_meta.get("labels") or {}
    selector = (service.get("spec") or {}).get("selector") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def compute_endpoints(service: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> Object:
    """The Endpoints document for a Service that `selects_pods`."""
    meta = service["metadata"]
    spec = service.get("spec") or {}
    service_ports = spec.get("ports") or []
    publish_unready = bool(spec.get("publishNotReadyAddresses"))
    groups: dict[PortKey, tuple[list[Object], list[Object]]] = {}
    for pod in pods:
        if not backs(service, pod):
            continue
        ports = _resolve_ports(service_ports, pod)
        if service_ports and not ports:
            continue
        pod_meta = pod["metadata"]
        address: Object = {"ip": pod["status"]["podIP"]}
        if node := (pod.get("spec") or {}).get("nodeName"):
            address["nodeName"] = node
        address["targetRef"] = {"kind": "Pod", "name": pod_meta["name"], "namespace": pod_meta["namespace"]}
        if uid := pod_meta.get("uid"):
            address["targetRef"]["uid"] = uid
        ready, unready = groups.setdefault(ports, ([], []))
        (ready if publish_unready or _is_ready(pod) else unready).append(address)

    def by_ip(address: Object) -> tuple[int, int]:
        ip = ipaddress.ip_address(address["ip"])
        return ip.version, int(ip)

    subsets = []
    for ports, (ready, unready) in sorted(groups.items()):
        subset: Object = {}
        if ready:
            subset["addresses"] = sorted(ready, key=by_ip)
        if unready:
            subset["notReadyAddresses"] = sorted(unready, key=by_ip)
        if ports:
            subset["ports"] = [
                {**({"name": name} if name else {}), "port": number, "protocol": protocol}
                for name, number, protocol in ports
            ]
        subsets.append(subset)
    endpoints_meta: Object = {"name": meta["name"], "namespace": meta["namespace"]}
    if labels := meta.get("labels"):
        endpoints_meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": endpoints_meta, "subsets": subsets}
