"""A running lab: building it, adding and removing pods, running commands in
them, and tearing it all down (the I/O shell around `cni.lab.topology`).

Theory of operation.
- `up`: create the underlay namespace (a bridge), then per node a namespace, a
  veth into the underlay, the node list and conflist files, and a tulle-agent
  started inside the node namespace (nsenter) in its own session, so it outlives
  the command that started it. A failure part-way runs `down`.
- Pods: a namespace, then the node's conflist run through `cni.runtime` inside
  the node namespace (where a kubelet would run it). A failed ADD is followed by
  DEL, as a runtime does, and the namespace is removed.
- With a control plane, each pod gets /etc/netns/<its netns>/resolv.conf (cluster DNS on
  its gateway, `cni.lab.pod_dns`), seen by `ip netns exec`; removed with the pod and on `down`.
- Deleting a pod drains it first, as Kubernetes and Istio do: with a control plane, the Pod
  is marked terminating (deletionTimestamp: it leaves every Service's endpoints), the lab
  waits (bounded) until tulle-control's CSDS shows every sidecar and agent has ACKed
  config without the pod's address (`cni.lab.endpoint_drain`), then stops the app and the
  sidecar, which finish what is in flight (`cni.lab.sidecar`), then DEL, then deletes the Pod.
- `down`: DEL every pod (cached results, reverse order), stop the agents by the
  PID recorded at start (checked against the process start time, so a recycled
  PID is never signalled) and any agent serving a socket inside the lab's
  directory that the state does not record, delete every namespace named
  `tl-<lab>.*`, and remove the lab directory (and /run/tulle/lab, /run/tulle if
  they end up empty).
- Node namespaces get ip_forward from their agent and loose rp_filter from the
  lab, whatever the host's settings; nothing is set in the host's namespace.
- With a control plane (`up(..., control=True)`, what `meshctl lab up` does): tulle-control
  runs in the underlay namespace (see `cni.lab.control`), each agent joins it with
  `--control` (registers its Node, gets its pod CIDR, follows ADS), pods are created as
  objects before their CNI ADD and deleted after their DEL, and labels change through the
  API. `down` stops tulle-control after the agents.
- State (nodes, pods, agent PIDs) lives in `<root>/<lab>/state.json`, written
  atomically; commands on one lab are serialised by an flock on `<root>/<lab>.lock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cni.errors import CniError
from cni.lab.control import (
    API_PORT,
    CONTROL_IP,
    XDS_PORT,
    LabApi,
    api_socket,
    control_argv,
    xds_socket,
)
from cni.lab.endpoint_drain import DRAIN_TIMEOUT, wait_until_unrouted
from cni.lab.pod_dns import remove_lab_files, remove_pod_files, write_resolv_conf
from cni.lab.sidecar import (
    GRACEFUL_STOP,
    INJECT_ANNOTATION,
    INJECTION_LABEL,
    PodProcesses,
    read_events,
    sidecar_bootstrap,
)
from cni.lab.topology import (
    NAMESPACE_NAME_LABEL,
    UNDERLAY,
    LabError,
    LabNode,
    LabPod,
    LabTopology,
    PortMapping,
    check_lab_name,
    conflist,
    node_list,
)
from cni.lab.underlay_capture import RunningCapture
from cni.runtime import CniRuntime, RuntimeConf, load_from_dir
from cni.wire import call

DEFAULT_ROOT = Path(os.environ.get("TULLE_LAB_ROOT", "/run/tulle/lab"))
REFERENCE_PLUGIN_DIR = "/usr/lib/cni"
AGENT_START_TIMEOUT = 20.0


def _run(argv: Sequence[str], what: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"{what}: {' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _ip(netns: str, *args: str, what: str) -> None:
    _run(["ip", "-n", netns, *args], what)


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _in_pod(pod: LabPod, argv: Sequence[str]) -> list[str]:
    """`argv` in the pod's network namespace, seeing the pod's /etc/netns files (resolv.conf)
    as `ip netns exec` binds them; it execs, so a Popen's PID is the command's own."""
    return ["ip", "netns", "exec", pod.netns, *argv]


def _bin(name: str) -> str:
    """A Tulle executable: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise LabError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _process_start(pid: int) -> str:
    """The start time of a live process (field 22 of /proc/PID/stat), '' if it is gone."""
    # When this process started the agent (a library user), reap it once it exits.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] in ("Z", "X") else fields[19]


def _processes(wanted: Callable[[list[bytes]], bool]) -> list[tuple[int, str]]:
    """(pid, start time) of the live processes whose argv is `wanted`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted(argv) and (start := _process_start(int(entry.name))):
            found.append((int(entry.name), start))
    return found


class Lab:
    def __init__(self, name: str, root: Path = DEFAULT_ROOT) -> None:
        check_lab_name(name)
        self.name = name
        self.root = root
        self.dir = root / name
        self._nodes: list[LabNode] = []
        self._pods: list[LabPod] = []
        self._namespaces: dict[str, dict[str, str]] = {}
        self._node_count = 0
        self._control: dict[str, Any] | None = None  # {"pid", "start"} of tulle-control

    # -- lifecycle ----------------------------------------------------------------

    @classmethod
    def up(cls, name: str, nodes: int = 2, root: Path = DEFAULT_ROOT, control: bool = False) -> Lab:
        topology = LabTopology(name, nodes)
        lab = cls(name, root)
        with lab._locked():
            if lab.dir.exists() or any(n.startswith(topology.prefix) for n in _netns_names()):
                raise LabError(f"lab {name!r} is already up (meshctl lab down --name {name})")
            lab._node_count = nodes
            if control:
                lab._control = {"pid": 0, "start": ""}
            try:
                lab._build(topology)
            except BaseException:
                lab._teardown()
                raise
        return lab

    @classmethod
    def open(cls, name: str, root: Path = DEFAULT_ROOT) -> Lab:
        lab = cls(name, root)
        if not lab._load():
            raise LabError(f"lab {name!r} is not up (meshctl lab up --name {name})")
        return lab

    def down(self) -> list[str]:
        """Removes everything; returns what could not be removed."""
        with self._locked():
            self._load()
            return self._teardown()

    # -- pods ---------------------------------------------------------------------

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str | None = None,
        labels: dict[str, str] | None = None,
        ports: Sequence[PortMapping] = (),
        container_ports: Sequence[dict[str, Any]] = (),
        annotations: dict[str, str] | None = None,
        inject: bool = False,
        app: Sequence[str] = (),
        proxy: Sequence[str] | None = None,
        service_account: str = "",
    ) -> LabPod:
        """`ports`: hostPorts (portmap); `container_ports`: the Pod object's container
        ports (with a control plane), e.g. {"name": "serve-80-tcp", "containerPort": 80};
        `annotations`: the Pod object's (with a control plane). `inject` (or the annotation
        `sidecar.tulle.io/inject: "true"`): the pod gets transparent capture and a sidecar
        (`proxy`: its argv, tulle-proxy by default), started and ready before `app` (argv)
        starts (`cni.lab.sidecar`); returns once the app runs. `service_account`: the Pod's
        serviceAccountName (its mesh identity; `default` if empty)."""
        annotations = dict(annotations or {})
        if inject:
            annotations[INJECT_ANNOTATION] = "true"
        marked = annotations.get(INJECT_ANNOTATION, "").lower()
        if marked == "true" and self._control is None:
            raise LabError(f"pod {namespace}/{name}: a sidecar needs the lab's control plane (meshctl lab up --control)")
        with self._locked():
            self._require_loaded()
            key = f"{namespace}/{name}"
            if any(p.key == key for p in self._pods):
                raise LabError(f"pod {key} already exists")
            target = self._pick_node(node)
            container_id = secrets.token_hex(16)
            netns = LabTopology(self.name, self._node_count).pod_netns(container_id)
            namespace_labels: Mapping[str, str] = self._namespaces.get(namespace, {})
            if self._control is not None:
                with self.api() as api:
                    # Created if missing, never relabelled: a user may have applied it with labels.
                    api.ensure_namespace(namespace)
                    namespace_labels = ((api.get("Namespace", "", namespace) or {}).get("metadata") or {}).get("labels") or {}
            # As the agent decides capture: the pod's annotation, else its namespace's label.
            sidecar = marked == "true" or (marked != "false" and namespace_labels.get(INJECTION_LABEL) == "enabled")
            if sidecar:  # as an injection webhook marks the pod: tulle-control then knows it speaks mTLS
                annotations[INJECT_ANNOTATION] = "true"
            if self._control is not None:
                with self.api() as api:
                    api.create_pod(namespace, name, dict(labels or {}), container_ports, annotations, service_account)
            _run(["ip", "netns", "add", netns], f"create namespace for pod {key}")
            runtime, net, rt = self._cni(target, netns, container_id, namespace, name, tuple(ports))
            try:
                _ip(netns, "link", "set", "lo", "up", what=f"bring up lo of pod {key}")
                result = runtime.add(net, rt)
            except BaseException as exc:  # also an interrupted `pod add`: nothing may stay behind
                with contextlib.suppress(CniError):
                    runtime.delete(net, rt)
                _run(["ip", "netns", "del", netns], f"delete namespace of pod {key}")
                if self._control is not None:
                    with self.api() as api:
                        api.delete("Pod", namespace, name)
                if isinstance(exc, CniError | LabError):
                    raise LabError(f"pod {key}: network setup on {target.name} failed: {exc}") from None
                raise
            address = result["ips"][0]["address"].split("/")[0]
            pod = LabPod(namespace, name, target.name, netns, container_id, ipaddress.IPv4Address(address),
                         dict(labels or {}), tuple(ports))
            try:
                if self._control is not None and result["ips"][0].get("gateway"):
                    # The node's agent answers cluster DNS on the pod's gateway.
                    write_resolv_conf(netns, namespace, ipaddress.IPv4Address(result["ips"][0]["gateway"]))
                if sidecar or app:
                    pod = self._start_processes(pod, target, sidecar, app, proxy)
            except BaseException:  # the supervisor, if started, is stopped by _start_processes
                self._delete_pod(pod, drain=False)
                raise
            self._pods.append(pod)
            self._namespaces[namespace] = {**namespace_labels, NAMESPACE_NAME_LABEL: namespace}
            self._save()
            return pod

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._locked():
            self._require_loaded()
            pod = self.pod(namespace, name)
            self._delete_pod(pod)
            self._pods.remove(pod)
            self._save()

    def set_pod_labels(self, namespace: str, name: str, labels: dict[str, str]) -> LabPod:
        """Replaces a pod's labels (the complete new set)."""
        with self._locked():
            self._require_loaded()
            old = self.pod(namespace, name)
            new = dataclasses.replace(old, labels=dict(labels))
            if self._control is not None:
                with self.api() as api:
                    api.set_pod_labels(namespace, name, labels)
            self._pods[self._pods.index(old)] = new
            self._save()
            return new

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        self._refresh()
        if namespace not in self._namespaces:
            raise LabError(f"namespace {namespace!r} has no pods in lab {self.name!r}")
        return dict(self._namespaces[namespace])

    def set_namespace_labels(self, namespace: str, labels: dict[str, str]) -> dict[str, str]:
        """Replaces a namespace's labels; kubernetes.io/metadata.name stays, as in Kubernetes.
        A namespace exists in the lab once it has been labelled or holds a pod."""
        with self._locked():
            self._require_loaded()
            if labels.get(NAMESPACE_NAME_LABEL, namespace) != namespace:
                raise LabError(f"--labels: {NAMESPACE_NAME_LABEL} is immutable (it is {namespace!r})")
            self._namespaces[namespace] = {**labels, NAMESPACE_NAME_LABEL: namespace}
            if self._control is not None:
                with self.api() as api:
                    api.ensure_namespace(namespace, self._namespaces[namespace])
            self._save()
            return dict(self._namespaces[namespace])

    def restart_agent(self, node_name: str) -> LabNode:
        """Stops a node's tulle-agent and starts a new one (pods and kernel state stay)."""
        with self._locked():
            self._require_loaded()
            node = self._pick_node(node_name)
            problems = self._stop_agent(node)
            if problems:
                raise LabError("; ".join(problems))
            started = self._start_agent(node, self.dir / "nodes.json")
            self._nodes[self._nodes.index(node)] = started
            self._save()
            self._wait_for_agent(started)
            return started

    def stop_agent(self, node_name: str) -> None:
        """Stops a node's tulle-agent (`restart_agent` starts it again)."""
        with self._locked():
            self._require_loaded()
            problems = self._stop_agent(self._pick_node(node_name))
            if problems:
                raise LabError("; ".join(problems))

    def api(self) -> LabApi:
        """A config-API client of the lab's tulle-control (close it, or use `with`)."""
        if self._control is None:
            raise LabError(f"lab {self.name!r} runs no control plane (meshctl lab up --control)")
        return LabApi(self.dir)

    @property
    def has_control(self) -> bool:
        return self._control is not None

    def control_addresses(self) -> dict[str, str]:
        """Where meshctl on this host finds the lab's control plane."""
        return {"TULLE_SERVER": f"unix:{api_socket(self.dir)}", "TULLE_XDS_ADDRESS": f"unix:{xds_socket(self.dir)}"}

    def pod(self, namespace: str, name: str) -> LabPod:
        self._refresh()
        for pod in self._pods:
            if (pod.namespace, pod.name) == (namespace, name):
                return pod
        raise LabError(f"pod {namespace}/{name} does not exist in lab {self.name!r}")

    def pods(self) -> list[LabPod]:
        self._refresh()
        return list(self._pods)

    def nodes(self) -> list[LabNode]:
        self._refresh()
        return list(self._nodes)

    def exec(self, pod: LabPod, argv: Sequence[str], timeout: float | None = 60, **run: Any) -> subprocess.CompletedProcess[str]:
        """Runs a command inside the pod's network namespace (with the pod's resolv.conf)."""
        return subprocess.run(_in_pod(pod, argv), text=True, timeout=timeout, **run)

    def exec_on_node(self, node: LabNode, argv: Sequence[str], timeout: float | None = 60, **run: Any) -> subprocess.CompletedProcess[str]:
        """Runs a command inside a node's network namespace (e.g. nft, ip)."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", "--", *argv], text=True, timeout=timeout, **run)

    def capture_underlay(self, node: str = "node-1", seconds: float = 300.0) -> RunningCapture:
        """Starts counting what `node` sends and receives on the underlay (VXLAN, and any
        plaintext HTTP inside it); `.stop()` returns the counts. Bounded by `seconds`."""
        self._refresh()
        if all(n.name != node for n in self._nodes):
            raise LabError(f"lab {self.name!r} has no node {node!r}")
        return RunningCapture(self._underlay_netns(), node, seconds)

    def spawn(self, pod: LabPod, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Starts a long-running process (a server) inside the pod's namespace."""
        return subprocess.Popen(_in_pod(pod, argv), **popen)

    def status(self) -> dict[str, Any]:
        self._refresh()
        nodes = []
        for node in self._nodes:
            alive = bool(node.agent_pid) and _process_start(node.agent_pid) == node.agent_start
            entry = {**node.to_json(), "agent": "running" if alive else "stopped",
                     "pods": sum(1 for p in self._pods if p.node == node.name)}
            if alive:
                with contextlib.suppress(OSError, ValueError):
                    entry["attachments"] = call(str(self._socket(node)), {"op": "status"}, timeout=5)["attachments"]
            nodes.append(entry)
        control = None
        if self._control is not None:
            alive = _process_start(int(self._control["pid"])) == self._control["start"]
            control = {"pid": self._control["pid"], "state": "running" if alive else "stopped", **self.control_addresses()}
        return {"name": self.name, "dir": str(self.dir), "underlay": self._underlay_netns(), "control": control,
                "nodes": nodes, "namespaces": dict(self._namespaces), "pods": [p.to_json() for p in self._pods]}

    # -- building -----------------------------------------------------------------

    def _build(self, topology: LabTopology) -> None:
        self.dir.mkdir(parents=True, mode=0o700)
        underlay = topology.underlay_netns
        _run(["ip", "netns", "add", underlay], "create the underlay namespace")
        _ip(underlay, "link", "add", "ul0", "type", "bridge", what="create the underlay bridge")
        _ip(underlay, "link", "set", "ul0", "up", what="bring the underlay bridge up")
        nodes = topology.nodes()
        nodes_file = self.dir / "nodes.json"
        nodes_file.write_text(json.dumps(node_list(nodes), indent=2))
        for node in nodes:
            self._build_node(node, underlay)
        self._save()
        if self._control is not None:
            self._start_control(underlay)
        for node in nodes:
            started = self._start_agent(node, nodes_file)
            self._nodes.append(started)
            self._save()
        for node in self._nodes:
            self._wait_for_agent(node)
        if self._control is not None:
            # The control plane allocated each node's pod CIDR at registration.
            self._nodes = [dataclasses.replace(n, pod_cidr=ipaddress.IPv4Network(
                call(str(self._socket(n)), {"op": "status"}, timeout=5)["podCidr"])) for n in self._nodes]
            self._save()
            self._wait_for_overlay()

    def _wait_for_overlay(self) -> None:
        """Until every agent has programmed a route to every other node (node list via ADS)."""
        names = {n.name for n in self._nodes}
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        for node in self._nodes:
            while set(call(str(self._socket(node)), {"op": "status"}, timeout=5)["peers"]) != names - {node.name}:
                if time.monotonic() > deadline:
                    raise LabError(f"tulle-agent of {node.name} did not receive the node list in time")
                time.sleep(0.02)

    def _start_control(self, underlay: str) -> None:
        _ip(underlay, "link", "set", "lo", "up", what="bring up lo of the underlay")
        _ip(underlay, "addr", "add", f"{CONTROL_IP}/{UNDERLAY.prefixlen}", "dev", "ul0",
            what="address the control plane on the underlay")
        argv = ["nsenter", f"--net=/run/netns/{underlay}", "--", *control_argv(_bin("tulle-control"), self.dir)]
        with open(self.dir / "control.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._control = {"pid": proc.pid, "start": _process_start(proc.pid)}
        self._save()
        control = self._control
        with LabApi(self.dir) as api:
            try:
                api.wait_ready(lambda: _process_start(int(control["pid"])) == control["start"])
            except LabError as exc:
                log_text = (self.dir / "control.log").read_text(errors="replace")[-2000:]
                raise LabError(f"{exc}:\n{log_text}") from None

    def _build_node(self, node: LabNode, underlay: str) -> None:
        _run(["ip", "netns", "add", node.netns], f"create namespace of {node.name}")
        _ip(node.netns, "link", "set", "lo", "up", what=f"bring up lo of {node.name}")
        # A new namespace copies the host's rp_filter; strict mode would drop a
        # remote pod's packets to a hostPort (they enter on the underlay, their
        # source routes back through the overlay). Loose mode, as systemd sets it.
        for conf in ("all", "default"):
            _run(["nsenter", f"--net=/run/netns/{node.netns}", "--", "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=2"],
                 f"set loose reverse-path filtering on {node.name}")
        port = node.name  # the node's port on the underlay bridge
        _ip(underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.netns,
            what=f"wire {node.name} to the underlay")
        _ip(underlay, "link", "set", port, "master", "ul0", "up", what=f"attach {node.name} to the underlay bridge")
        _ip(node.netns, "addr", "add", f"{node.underlay_ip}/{UNDERLAY.prefixlen}", "dev", "eth0",
            what=f"address {node.name} on the underlay")
        _ip(node.netns, "link", "set", "eth0", "up", what=f"bring up {node.name}'s underlay link")
        home = self.dir / node.name
        (home / "net.d").mkdir(parents=True)
        (home / "net.d" / "10-tulle.conflist").write_text(json.dumps(conflist(str(self._socket(node))), indent=2))

    def _start_agent(self, node: LabNode, nodes_file: Path) -> LabNode:
        home = self.dir / node.name
        argv = ["nsenter", f"--net=/run/netns/{node.netns}", "--", _bin("tulle-agent"),
                "--node", node.name, "--socket", str(self._socket(node)), "--state-dir", str(home / "state")]
        if self._control is not None:
            # The CA is reached over the lab's root-only unix socket: it attests this node's pods.
            argv += ["--control", f"{CONTROL_IP}:{API_PORT}", "--ca-address", f"unix:{api_socket(self.dir)}",
                     "--sds-dir", str(self._sds_dir(node))]
        else:
            argv += ["--pod-cidr", str(node.pod_cidr), "--nodes-file", str(nodes_file)]
        with open(home / "agent.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        # nsenter execs the agent, so this PID is the agent's own.
        return LabNode(node.name, node.netns, node.underlay_ip, node.pod_cidr, proc.pid, _process_start(proc.pid))

    def _wait_for_agent(self, node: LabNode) -> None:
        deadline = time.monotonic() + AGENT_START_TIMEOUT * (3 if self._control is not None else 1)
        while time.monotonic() < deadline:
            if _process_start(node.agent_pid) != node.agent_start:
                log = (self.dir / node.name / "agent.log").read_text(errors="replace")[-2000:]
                raise LabError(f"tulle-agent of {node.name} exited during start-up:\n{log}")
            try:
                call(str(self._socket(node)), {"op": "status"}, timeout=2)
                return
            except OSError:
                time.sleep(0.05)
        raise LabError(f"tulle-agent of {node.name} did not answer in time")

    # -- tearing down -------------------------------------------------------------

    def _teardown(self) -> list[str]:
        problems: list[str] = []
        for pod in reversed(self._pods):
            try:
                self._delete_pod(pod, drain=False)  # everything goes: nobody is left to drain for
            except (LabError, CniError) as exc:
                problems.append(str(exc))
        self._pods.clear()
        for node in self._nodes:
            problems += self._stop_agent(node)
        # Pod supervisors the state file does not know (a `pod add` killed mid-way).
        for pid, start in self._stray_supervisors():
            self._stop_processes(LabPod("", "(unrecorded)", "", "", "", UNDERLAY.network_address,
                                        supervisor_pid=pid, supervisor_start=start))
        # Agents the state file does not know (it was lost or never written).
        for pid, start in self._stray_agents():
            problems += self._stop_agent(LabNode("(unrecorded)", "", UNDERLAY.network_address, UNDERLAY, pid, start))
        if self._control is not None and self._control.get("pid"):
            problems += self._stop_agent(LabNode("(control plane)", "", UNDERLAY.network_address, UNDERLAY,
                                                 int(self._control["pid"]), str(self._control["start"])))
        self._control = None
        prefix = f"tl-{self.name}."
        for netns in sorted(n for n in _netns_names() if n.startswith(prefix)):
            done = subprocess.run(["ip", "netns", "del", netns], capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"namespace {netns}: {done.stderr.strip()}")
        problems += remove_lab_files(prefix)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            problems.append(f"directory {self.dir} could not be removed")
        self._nodes.clear()
        return problems

    def _stray_agents(self) -> list[tuple[int, str]]:
        """tulle-agent processes serving a socket inside this lab's directory."""
        marker = f"{self.dir}/".encode()
        return _processes(lambda argv: any(a.endswith((b"tulle-agent", b"tulle-control")) for a in argv[:3]) and any(
            flag == b"--socket" and value.startswith(marker) for flag, value in itertools.pairwise(argv)))

    def _stray_supervisors(self) -> list[tuple[int, str]]:
        """Pod supervisors (`cni.lab.sidecar`) running a spec inside this lab's directory."""
        marker = f"{self._pods_dir()}/".encode()
        return _processes(lambda argv: any(a.startswith(marker) and a.endswith(b"/spec.json") for a in argv))

    def _stop_agent(self, node: LabNode) -> list[str]:
        if not node.agent_pid or _process_start(node.agent_pid) != node.agent_start:
            return []
        os.kill(node.agent_pid, signal.SIGTERM)
        for sig_after in (5.0, 5.0):
            deadline = time.monotonic() + sig_after
            while time.monotonic() < deadline:
                if _process_start(node.agent_pid) != node.agent_start:
                    return []
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.agent_pid, signal.SIGKILL)
        return [f"tulle-agent of {node.name} (pid {node.agent_pid}) did not exit"]

    def _start_processes(self, pod: LabPod, node: LabNode, sidecar: bool, app: Sequence[str],
                         proxy: Sequence[str] | None) -> LabPod:
        """Starts the pod's supervisor (sidecar, then app) and waits until the app runs."""
        directory = self._pod_dir(pod)
        directory.mkdir(parents=True, exist_ok=True)
        # The sidecar runs as uid 1337: it must reach its bootstrap (the lab dir is root's).
        os.chmod(self.dir, 0o711)
        for d in (directory.parent, directory):
            os.chmod(d, 0o755)
        with self.api() as api:
            node_doc = api.get("Node", "", node.name) or {}
        cidr = (node_doc.get("spec") or {}).get("podCIDR")
        if cidr:  # the underlay routes pod addresses to their node (the sidecar's xDS replies)
            _ip(self._underlay_netns(), "route", "replace", cidr, "via", str(node.underlay_ip),
                what=f"route {cidr} to {node.name} on the underlay")
        proxy_argv: list[str] = []
        if sidecar and proxy:  # e.g. Envoy: certificates over SDS from the agent's per-pod socket
            proxy_argv = [*proxy, "--disable-hot-restart"]
        elif sidecar:  # tulle-proxy makes its own key; the agent attests it by netns and gets it signed
            proxy_argv = [_bin("tulle-proxy"), "--identity-socket", str(self.dir / node.name / "identity.sock")]
        spec = PodProcesses(str(directory), proxy_argv, list(app))
        if sidecar:
            spec.bootstrap.write_text(json.dumps(sidecar_bootstrap(
                str(pod.ip), pod.name, pod.namespace, str(CONTROL_IP), XDS_PORT,
                self._sds_dir(node) / pod.namespace / pod.name / "socket"), indent=1))
            os.chmod(spec.bootstrap, 0o644)
        argv = _in_pod(pod, [sys.executable, "-c", "import sys; from cni.lab.sidecar import main; sys.exit(main())",
                             str(spec.write())])
        with (directory / "supervisor.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        pod = dataclasses.replace(pod, supervisor_pid=proc.pid, supervisor_start=_process_start(proc.pid))
        try:
            self._wait_until_app_started(pod, proc, spec, directory)
        except BaseException:  # not ready, or interrupted: the supervisor must not outlive the pod
            self._stop_processes(pod)
            raise
        return pod

    def _wait_until_app_started(self, pod: LabPod, proc: subprocess.Popen[bytes], spec: PodProcesses,
                                directory: Path) -> None:
        deadline = time.monotonic() + spec.ready_timeout + 5
        while True:
            events = {e["event"]: e for e in read_events(directory)}
            if "app-started" in events:
                return
            if "failed" in events or proc.poll() is not None:
                reason = events.get("failed", {}).get("reason", f"supervisor exited with status {proc.poll()}")
                logs = "".join(f"\n{f.name}: {f.read_text(errors='replace')[-600:]}" for f in sorted(directory.glob("*.log")))
                raise LabError(f"pod {pod.key}: {reason}{logs}")
            if time.monotonic() > deadline:
                raise LabError(f"pod {pod.key}: the sidecar did not become ready (logs in {directory})")
            time.sleep(0.05)

    def _stop_processes(self, pod: LabPod) -> None:
        """Stops the pod's supervisor by PID (it stops the app, then the sidecar)."""
        if not pod.supervisor_pid or _process_start(pod.supervisor_pid) != pod.supervisor_start:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pod.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_STOP
        while _process_start(pod.supervisor_pid) == pod.supervisor_start:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.supervisor_pid, signal.SIGKILL)  # its session: the app too
                break
            time.sleep(0.02)

    def _pods_dir(self) -> Path:
        return self.dir / "pods"

    def _pod_dir(self, pod: LabPod) -> Path:
        return self._pods_dir() / f"{pod.namespace}.{pod.name}"

    def _delete_pod(self, pod: LabPod, drain: bool = True) -> None:
        """Removes a pod; with `drain` (and a control plane), gracefully: see `cni.lab.endpoint_drain`."""
        control_alive = self._control is not None and _process_start(int(self._control["pid"])) == self._control["start"]
        if drain and control_alive:
            # A pod already gone from the API is routed to by nobody.
            with self.api() as api, contextlib.suppress(LabError):
                api.mark_pod_terminating(pod.namespace, pod.name, int(DRAIN_TIMEOUT + GRACEFUL_STOP))
            # Bounded: a node that never takes the change must not keep the pod alive.
            wait_until_unrouted(xds_socket(self.dir), str(pod.ip))
        self._stop_processes(pod)
        shutil.rmtree(self._pod_dir(pod), ignore_errors=True)
        node = next((n for n in self._nodes if n.name == pod.node), None)
        if node is not None and _process_start(node.agent_pid) == node.agent_start:
            runtime, net, rt = self._cni(node, pod.netns, pod.container_id, pod.namespace, pod.name, pod.ports)
            try:
                runtime.delete(net, rt)
            except CniError as exc:
                raise LabError(f"pod {pod.key}: network teardown failed: {exc}") from None
        if control_alive:
            with self.api() as api:
                api.delete("Pod", pod.namespace, pod.name)
        remove_pod_files(pod.netns)
        if pod.netns in _netns_names():
            _run(["ip", "netns", "del", pod.netns], f"delete namespace of pod {pod.key}")

    # -- helpers ------------------------------------------------------------------

    def _cni(
        self, node: LabNode, netns: str, container_id: str, namespace: str, name: str, ports: tuple[PortMapping, ...]
    ) -> tuple[CniRuntime, Any, RuntimeConf]:
        runtime = CniRuntime(
            [str(Path(_bin("tulle-cni")).parent), REFERENCE_PLUGIN_DIR],
            self.dir / "cni-cache",
            netns=f"/run/netns/{node.netns}",
        )
        net = load_from_dir(self.dir / node.name / "net.d")
        rt = RuntimeConf(
            container_id=container_id,
            netns=f"/run/netns/{netns}",
            ifname="eth0",
            args=(("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name),
                  ("K8S_POD_INFRA_CONTAINER_ID", container_id)),
            capability_args={"portMappings": [p.to_json() for p in ports]} if ports else {},
        )
        return runtime, net, rt

    def _pick_node(self, name: str | None) -> LabNode:
        if name is not None:
            for node in self._nodes:
                if node.name == name or node.name == f"node-{name}":
                    return node
            raise LabError(f"--node: {name!r} is not a node of lab {self.name!r} ({', '.join(n.name for n in self._nodes)})")
        # The node with the fewest pods (the first on a tie), like a spreading scheduler.
        return min(self._nodes, key=lambda n: sum(1 for p in self._pods if p.node == n.name))

    def _socket(self, node: LabNode) -> Path:
        return self.dir / node.name / "agent.sock"

    def _sds_dir(self, node: LabNode) -> Path:
        return self.dir / node.name / "sds"

    def _underlay_netns(self) -> str:
        return f"tl-{self.name}.ul"

    def _require_loaded(self) -> None:
        # Always from disk: another process (meshctl, a runner) may have changed the lab.
        if not self._load():
            raise LabError(f"lab {self.name!r} is not up (meshctl lab up --name {self.name})")

    def _refresh(self) -> None:
        if not self._load():
            self._nodes, self._pods, self._namespaces = [], [], {}

    def _load(self) -> bool:
        try:
            state = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return False
        self._node_count = int(state["nodeCount"])
        self._nodes = [LabNode.from_json(n) for n in state["nodes"]]
        self._pods = [LabPod.from_json(p) for p in state["pods"]]
        self._namespaces = {ns: dict(labels) for ns, labels in state.get("namespaces", {}).items()}
        self._control = state.get("control")
        return True

    def _save(self) -> None:
        state = {"name": self.name, "nodeCount": self._node_count,
                 "nodes": [n.to_json() for n in self._nodes], "pods": [p.to_json() for p in self._pods],
                 "namespaces": self._namespaces, "control": self._control}
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.dir / "state.json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f"{self.name}.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if not self.dir.exists():
                    lock_path.unlink(missing_ok=True)
                    # Only when empty: other labs, or an agent's socket, may live there.
                    parents = [self.root, self.root.parent] if self.root == Path("/run/tulle/lab") else [self.root]
                    for parent in parents:
                        with contextlib.suppress(OSError):
                            parent.rmdir()
                fcntl.flock(lock, fcntl.LOCK_UN)
