"""A lab's shape, without I/O: names, addresses and configuration derived from
the lab's name and node count.

Rules:
- Every namespace of lab L is named `tl-L.<what>`; lab names hold only
  [a-z0-9-], so the prefix `tl-L.` is the lab's alone (two labs, even named
  `a` and `a-b`, never share a namespace) and `down` can find stragglers by it.
- Node i (1-based) is `node-i`: underlay address 172.30.0.i/24, pod CIDR
  10.244.i.0/24, VTEP MAC derived from its underlay address. All of them live
  inside the lab's namespaces, so any number of labs can reuse them.
- A pod's namespace is `tl-L.p-<container id prefix>`; its container ID is
  random, so a pod deleted and added again is a new attachment.
- A node's network is tulle-cni with portmap chained after it, so pods can
  publish hostPorts on their node's underlay address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from cni.overlay import vtep_mac_for

LAB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
# Kubernetes' rule for namespace and pod names (an RFC 1123 label / subdomain).
OBJECT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
MAX_NODES = 250
UNDERLAY = ipaddress.IPv4Network("172.30.0.0/24")
NETWORK_NAME = "tulle"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # on every namespace, immutable
POD_MTU = 1450  # the underlay's 1500 minus VXLAN's 50


class LabError(Exception):
    """Something the operator asked for that cannot be done; the message says why."""


@dataclass(frozen=True)
class LabNode:
    name: str
    netns: str
    underlay_ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    agent_pid: int = 0
    agent_start: str = ""

    @property
    def vtep_mac(self) -> str:
        return vtep_mac_for(self.underlay_ip)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "netns": self.netns, "underlayIp": str(self.underlay_ip),
                "podCidr": str(self.pod_cidr), "agentPid": self.agent_pid, "agentStart": self.agent_start}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabNode:
        return cls(d["name"], d["netns"], ipaddress.IPv4Address(d["underlayIp"]),
                   ipaddress.IPv4Network(d["podCidr"]), int(d.get("agentPid", 0)), str(d.get("agentStart", "")))


@dataclass(frozen=True)
class PortMapping:
    """A hostPort: `host_port` on the pod's node forwards to `container_port` (portmap)."""

    host_port: int
    container_port: int
    protocol: str = "tcp"

    def to_json(self) -> dict[str, Any]:
        return {"hostPort": self.host_port, "containerPort": self.container_port, "protocol": self.protocol}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PortMapping:
        return cls(int(d["hostPort"]), int(d["containerPort"]), str(d.get("protocol", "tcp")))


@dataclass(frozen=True)
class LabPod:
    namespace: str
    name: str
    node: str
    netns: str
    container_id: str
    ip: ipaddress.IPv4Address
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    supervisor_pid: int = 0  # the pod's sidecar/app supervisor (cni.lab.sidecar), 0: none
    supervisor_start: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "node": self.node, "netns": self.netns,
                "containerID": self.container_id, "ip": str(self.ip), "labels": dict(self.labels),
                "ports": [p.to_json() for p in self.ports],
                "supervisorPid": self.supervisor_pid, "supervisorStart": self.supervisor_start}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabPod:
        return cls(d["namespace"], d["name"], d["node"], d["netns"], d["containerID"],
                   ipaddress.IPv4Address(d["ip"]), dict(d.get("labels", {})),
                   tuple(PortMapping.from_json(p) for p in d.get("ports", [])),
                   int(d.get("supervisorPid", 0)), str(d.get("supervisorStart", "")))


@dataclass(frozen=True)
class LabTopology:
    name: str
    node_count: int

    def __post_init__(self) -> None:
        check_lab_name(self.name)
        if not 1 <= self.node_count <= MAX_NODES:
            raise LabError(f"--nodes: {self.node_count} is not between 1 and {MAX_NODES}")

    @property
    def prefix(self) -> str:
        return f"tl-{self.name}."

    @property
    def underlay_netns(self) -> str:
        return self.prefix + "ul"

    def nodes(self) -> list[LabNode]:
        return [
            LabNode(
                name=f"node-{i}",
                netns=f"{self.prefix}node-{i}",
                underlay_ip=UNDERLAY.network_address + i,
                pod_cidr=ipaddress.IPv4Network(f"10.244.{i}.0/24"),
            )
            for i in range(1, self.node_count + 1)
        ]

    def pod_netns(self, container_id: str) -> str:
        return f"{self.prefix}p-{container_id[:12]}"


def check_lab_name(name: str) -> None:
    if not LAB_NAME_RE.match(name):
        raise LabError(f"--name: {name!r} must be 1-20 characters of a-z, 0-9 and '-', starting with a letter or digit")


def node_list(nodes: list[LabNode]) -> list[dict[str, str]]:
    """The overlay's node list (tulle.netpolicy.v1.Node, JSON form)."""
    return [{"name": n.name, "underlayIp": str(n.underlay_ip), "podCidr": str(n.pod_cidr), "vtepMac": n.vtep_mac}
            for n in nodes]


def conflist(agent_socket: str) -> dict[str, Any]:
    """A node's network: tulle-cni first, portmap chained after it (hostPort)."""
    # 1.0.0: the newest version Debian's reference plugins speak (tulle-cni: 1.1.0).
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {"type": "tulle-cni", "agentSocket": agent_socket, "mtu": POD_MTU, "hairpinMode": True},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def check_namespace(namespace: str) -> str:
    if not OBJECT_NAME_RE.match(namespace):
        raise LabError(f"namespace {namespace!r} must be lower-case letters, digits, '-' and '.'")
    return namespace


def parse_pod_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep:
        namespace, name = "default", ref
    for what, value in (("namespace", namespace), ("name", name)):
        if not OBJECT_NAME_RE.match(value):
            raise LabError(f"pod {ref!r}: {what} {value!r} must be lower-case letters, digits, '-' and '.'")
    return namespace, name


def parse_labels(raw: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
            raise LabError(f"--labels: {part!r} is not key=value with a valid Kubernetes label key and value")
        labels[key] = value
    return labels


def parse_port(raw: str) -> PortMapping:
    """HOST:CONTAINER[/tcp|/udp], as `--port 18080:8080/tcp`."""
    ports, _, protocol = raw.partition("/")
    host, sep, container = ports.partition(":")
    protocol = protocol or "tcp"
    try:
        mapping = PortMapping(int(host), int(container), protocol)
    except ValueError:
        mapping = None
    if (
        not sep or mapping is None or protocol not in ("tcp", "udp")
        or not (1 <= mapping.host_port <= 65535 and 1 <= mapping.container_port <= 65535)
    ):
        raise LabError(f"--port: {raw!r} is not HOST:CONTAINER[/tcp|/udp] with ports 1-65535")
    return mapping
