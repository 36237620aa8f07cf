"""Conformance corpora: case files, topologies, and the probes they expand to.

Format (see the corpus README): a folder with `cases/*.yaml` and `topologies/*.yaml`.
A case names a topology (or carries one inline) and a list of steps; each step applies
objects (policies; Namespace/Pod documents are complete new label sets), deletes
policies, then expects verdicts for blocks of probes (protocol, port, pair patterns).

Rules of expansion (the README's):
- A pattern `<src> -> <dst>` has sides `*`, `ns/*`, `*/pod`, `ns/pod`, and denotes every
  ordered pair of *distinct* pods it matches, in topology order (sources outer).
- A block probes its `scope` patterns (every pair when absent), de-duplicated in first-seen
  order; a probed pair matched by any `except` pattern gets the opposite of `default`.
- Strings `${podcidr:<ns>/<pod>/<len>}` become the canonical IPv4 network of that prefix
  length around the pod's IP, once IPs are known (`resolve_placeholders`).
Steps keep the topology's label changes, so a pattern sees the labels of its step.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from netpolicy.cluster import ClusterState, ContainerPort, Namespace, Pod
from netpolicy.model import POLICY_KINDS, Protocol, parse_policy

PodRef = tuple[str, str]

_PLACEHOLDER = re.compile(r"\$\{podcidr:([^/}]+)/([^/}]+)/(\d+)\}")


class CorpusError(ValueError):
    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class TopologyPod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ports: tuple[ContainerPort, ...]


@dataclass(frozen=True, slots=True)
class Topology:
    namespaces: tuple[Namespace, ...]
    pods: tuple[TopologyPod, ...]

    @property
    def refs(self) -> list[PodRef]:
        return [(p.namespace, p.name) for p in self.pods]

    def pod(self, ref: PodRef) -> TopologyPod:
        for p in self.pods:
            if (p.namespace, p.name) == ref:
                return p
        raise KeyError(ref)


@dataclass(frozen=True, slots=True)
class Probe:
    src: PodRef
    dst: PodRef
    protocol: Protocol
    port: int
    expected: str  # "allow" | "deny"

    def __str__(self) -> str:
        return f"{self.src[0]}/{self.src[1]} -> {self.dst[0]}/{self.dst[1]} {self.protocol.value}/{self.port}"


@dataclass(frozen=True, slots=True)
class Block:
    protocol: Protocol
    port: int
    probes: tuple[Probe, ...]


@dataclass(frozen=True, slots=True)
class Step:
    description: str
    apply: tuple[Mapping[str, Any], ...]
    delete: tuple[tuple[str, str | None, str], ...]
    blocks: tuple[Block, ...]

    @property
    def probes(self) -> list[Probe]:
        return [p for b in self.blocks for p in b.probes]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    source: str
    features: tuple[str, ...]
    topology: Topology
    steps: tuple[Step, ...]


def load_corpus(root: Path, only: str | None = None) -> list[Case]:
    """Every case of `root/cases` (name order), optionally only names matching `only`: a
    glob, or several separated by commas (`'anp-*,banp-*'`), any of which may match."""
    globs = [g.strip() for g in only.split(",") if g.strip()] if only is not None else None
    topologies: dict[str, Topology] = {}
    for path in sorted((root / "topologies").glob("*.yaml")):
        topologies[path.stem] = parse_topology(yaml.safe_load(path.read_text()), str(path))
    cases = []
    for path in sorted((root / "cases").glob("*.yaml")):
        if globs is not None and not any(fnmatch.fnmatchcase(path.stem, g) for g in globs):
            continue
        cases.append(parse_case(yaml.safe_load(path.read_text()), topologies, str(path)))
    return cases


def parse_topology(doc: Any, where: str) -> Topology:
    namespaces, pods = [], []
    for ns, body in (doc.get("namespaces") or {}).items():
        namespaces.append(Namespace.create(ns, body.get("labels") or {}))
        for name, pod in (body.get("pods") or {}).items():
            ports = tuple(
                ContainerPort(p["port"], Protocol(p["protocol"]), p.get("name")) for p in pod.get("ports") or []
            )
            pods.append(TopologyPod(ns, name, dict(pod.get("labels") or {}), ports))
    if len(pods) < 2:
        raise CorpusError(where, "a topology needs at least two pods")
    return Topology(tuple(namespaces), tuple(pods))


def parse_case(doc: Any, topologies: Mapping[str, Topology], where: str) -> Case:
    ref = doc.get("topology")
    if isinstance(ref, str):
        if ref not in topologies:
            raise CorpusError(where, f"unknown topology {ref!r}")
        topology = topologies[ref]
    else:
        topology = parse_topology(ref, f"{where}: topology")
    steps = []
    for i, step in enumerate(doc.get("steps") or [], 1):
        deletes = tuple((d["kind"], d.get("namespace"), d["name"]) for d in step.get("delete") or [])
        blocks = tuple(_block(b, topology, f"{where}: steps[{i}]") for b in step.get("expect") or [])
        steps.append(Step(step.get("description", ""), tuple(step.get("apply") or ()), deletes, blocks))
    return Case(doc["name"], doc.get("source", ""), tuple(doc.get("features") or ()), topology, tuple(steps))


def _block(doc: Mapping[str, Any], topology: Topology, where: str) -> Block:
    protocol, port, default = Protocol(doc["protocol"]), int(doc["port"]), doc["default"]
    scope: list[tuple[PodRef, PodRef]] = []
    for pattern in doc.get("scope") or ["* -> *"]:
        for pair in expand(pattern, topology):
            if pair not in scope:
                scope.append(pair)
    flipped = {pair for pattern in doc.get("except") or [] for pair in expand(pattern, topology)}
    opposite = "deny" if default == "allow" else "allow"
    probes = tuple(
        Probe(src, dst, protocol, port, opposite if (src, dst) in flipped else default) for src, dst in scope
    )
    return Block(protocol, port, probes)


def expand(pattern: str, topology: Topology) -> list[tuple[PodRef, PodRef]]:
    """Every ordered pair of distinct pods that `pattern` matches."""
    if pattern.count("->") != 1:
        raise CorpusError(pattern, "a pair pattern is '<src> -> <dst>'")
    src, dst = (_side(s) for s in pattern.split("->"))
    refs = topology.refs
    return [(a, b) for a in refs for b in refs if a != b and _side_matches(src, a) and _side_matches(dst, b)]


def _side(text: str) -> tuple[str, str]:
    text = text.strip()
    if text == "*":
        return ("*", "*")
    ns, slash, pod = text.partition("/")
    if not slash or not ns or not pod:
        raise CorpusError(text, "a side is *, ns/*, */pod or ns/pod")
    return (ns, pod)


def _side_matches(side: tuple[str, str], ref: PodRef) -> bool:
    return side[0] in ("*", ref[0]) and side[1] in ("*", ref[1])


def resolve_placeholders(obj: Any, ip_of: Callable[[PodRef], ipaddress.IPv4Address]) -> Any:
    """`obj` with every `${podcidr:ns/pod/len}` replaced by the network around that IP."""
    if isinstance(obj, Mapping):
        return {k: resolve_placeholders(v, ip_of) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve_placeholders(v, ip_of) for v in obj]
    if isinstance(obj, str):
        return _PLACEHOLDER.sub(
            lambda m: str(ipaddress.ip_network(f"{ip_of((m[1], m[2]))}/{m[3]}", strict=False)), obj
        )
    return obj


def initial_state(topology: Topology, ips: Mapping[PodRef, ipaddress.IPv4Address],
                  nodes: Mapping[PodRef, str]) -> ClusterState:
    """The topology's namespaces and pods (at the given IPs and nodes), no policies."""
    return ClusterState.build(
        topology.namespaces,
        (Pod(p.namespace, p.name, dict(p.labels), ips[(p.namespace, p.name)], nodes[(p.namespace, p.name)], p.ports)
         for p in topology.pods),
    )


def apply_step(state: ClusterState, step: Step, ip_of: Callable[[PodRef], ipaddress.IPv4Address]) -> ClusterState:
    """`state` after the step's applies (in order) and deletes. Policy documents are
    validated here, so a bad one raises `PolicyError` naming its field."""
    for i, doc in enumerate(step.apply):
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        if kind in POLICY_KINDS:
            state = state.with_policy(parse_policy(resolve_placeholders(doc, ip_of), f"apply[{i}]"))
        elif kind == "Namespace":
            state = state.with_namespace(Namespace.create(meta["name"], meta.get("labels") or {}))
        elif kind == "Pod":
            pod = state.pods[(meta["namespace"], meta["name"])]
            state = state.with_pod(Pod(pod.namespace, pod.name, dict(meta.get("labels") or {}), pod.ip, pod.node, pod.ports))
        else:
            raise CorpusError(f"apply[{i}]", f"unsupported kind {kind!r}")
    for kind, namespace, name in step.delete:
        state = state.without_policy(kind, namespace, name)
    return state
