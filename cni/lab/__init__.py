"""The lab: a small cluster on one machine, without Kubernetes.

Nodes are network namespaces joined by an underlay that is itself a namespace
(a bridge), each running its own tulle-agent; pods are namespaces attached to
their node through tulle-cni, called with libcni's semantics (`cni.runtime`).
Nothing is created in the host's own network namespace, and `Lab.down()`
removes every namespace, process and file the lab made.

Use it as a library (`Lab.up(...)`, `Lab.open(name)`, `lab.add_pod(...)`,
`lab.exec(...)`) — the netpol conformance runner and the demo drive it this
way — or through `meshctl lab ...`.
"""

from cni.lab.cluster import Lab, LabError
from cni.lab.topology import LabNode, LabPod, LabTopology

__all__ = ["Lab", "LabError", "LabNode", "LabPod", "LabTopology"]
