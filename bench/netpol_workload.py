"""The synthetic cluster of the network-policy benchmark (see netpol_scale.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from netpolicy.cluster import ClusterState, ContainerPort, Namespace, Pod
from netpolicy.model import Policy, Protocol, parse_policy

NAMESPACES = 100
APPS = 500
NODES = 100
SERVER, CLIENT = 0, 100      # pod numbers of the two real pods (both on node-0)
SERVER_PORT = 8000           # policy 0 allows app-100 -> app-0 on this port


def pod_ip(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.244.{i // 250}.{i % 250 + 1}")


def make_pod(i: int) -> Pod:
    return Pod(f"ns-{i % NAMESPACES}", f"p-{i}", {"app": f"app-{i % APPS}", "tier": ("web", "db")[i % 2]},
               pod_ip(i), f"node-{i % NODES}", (ContainerPort(8080, Protocol.TCP, "http"),))


def policy_doc(j: int) -> dict[str, Any]:
    """Policy j lives where app-(j mod 500) lives, admits two peers on one port, and one
    in five also limits egress to a network."""
    app = j % APPS
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": f"app-{app}"}},
        "ingress": [{
            "from": [
                {"podSelector": {"matchLabels": {"app": f"app-{(app + 100) % APPS}"}}},
                {"namespaceSelector": {"matchLabels": {"team": f"t-{(j // APPS) % 10}"}},
                 "podSelector": {"matchLabels": {"app": f"app-{(app + 3 + j // APPS) % APPS}"}}},
            ],
            "ports": [{"port": SERVER_PORT + j % 997}],
        }],
    }
    if j % 5 == 1:
        spec["egress"] = [{"to": [{"ipBlock": {"cidr": f"172.16.{j % 256}.0/24"}}], "ports": [{"port": 443}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol-{j}", "namespace": f"ns-{j % NAMESPACES}"}, "spec": spec}


def policies(count: int) -> list[Policy]:
    return [parse_policy(policy_doc(j)) for j in range(count)]


def cluster(pods: int, policy_count: int) -> ClusterState:
    namespaces = [Namespace.create(f"ns-{n}", {"team": f"t-{n % 10}"}) for n in range(NAMESPACES)]
    return ClusterState.build(namespaces, (make_pod(i) for i in range(pods)), policies(policy_count))
