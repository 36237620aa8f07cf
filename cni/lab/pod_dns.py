"""Pods' name resolution in the lab: a resolv.conf per pod network namespace pointing at
its node's cluster DNS (tulle-agent, on the pod's gateway address).

`ip netns exec NAME` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf, so
commands run that way in a pod resolve Service names as in Kubernetes: the search path
of the pod's namespace with ndots:5 (kubelet's defaults). The lab writes the file after
a pod's ADD and removes the directory with the pod, and every `tl-<lab>.*` one on `down`.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

ETC_NETNS = Path("/etc/netns")


def resolv_conf(namespace: str, nameserver: ipaddress.IPv4Address) -> str:
    return (f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
            f"nameserver {nameserver}\n"
            "options ndots:5\n")


def write_resolv_conf(netns: str, namespace: str, nameserver: ipaddress.IPv4Address, root: Path = ETC_NETNS) -> None:
    directory = root / netns
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / ".resolv.conf.tmp"
    temporary.write_text(resolv_conf(namespace, nameserver))
    temporary.replace(directory / "resolv.conf")


def remove_pod_files(netns: str, root: Path = ETC_NETNS) -> None:
    shutil.rmtree(root / netns, ignore_errors=True)


def remove_lab_files(prefix: str, root: Path = ETC_NETNS) -> list[str]:
    """Removes /etc/netns/<prefix>*; returns what could not be removed."""
    if not root.is_dir():
        return []
    for directory in root.glob(f"{prefix}*"):
        shutil.rmtree(directory, ignore_errors=True)
    return [f"{d} could not be removed" for d in root.glob(f"{prefix}*")]
