"""Compiles the cluster's policies into the nftables ruleset of one node (sans-IO).

A node enforces *egress* for its own pods as sources and *ingress* for its own pods as
destinations; a connection between pods of two nodes is checked on both (egress on the
source's node, ingress on the destination's), a connection inside a node on that node
alone. Both kinds of traffic cross the node's forward hook (bridged, via br_netfilter,
or routed to the VXLAN device).

Theory of operation — per-packet cost independent of policy and pod counts:
- *Peer classes.* Every peer any policy names (a pod selector pair, an ipBlock, ANP
  networks) is an address predicate. Two addresses that satisfy exactly the same
  predicates, and (for pods) have the same named container ports, are indistinguishable
  to every policy, so they share a class. Addresses outside pods get classes from the
  CIDR predicates alone (the address space cut at every CIDR boundary). The kernel finds
  a packet's peer class with two lookups: an interval map over the address space and an
  exact map for pod IPs whose class differs from their range's.
- *Decisions.* For every local pod P, direction and peer class, the tier pipeline of
  `netpolicy.evaluate` (admin → NetworkPolicy → baseline → default allow) is run over the
  protocol/port space, cut at every port boundary the relevant rules name; the result is
  a list of (protocol range, port range) → allow/drop, each naming the deciding policy
  and rule. Three verdict maps hold them, most specific first: P's decisions for a peer
  that matches no predicate become P's *default* (other protocols) and the `pod . l4proto
  . dport` exceptions to it; a class gets elements in P's own `class . l4proto . dport`
  map only where its decision differs from those. A class that matches none of P's rules' peers
  (nearly all of them, usually) costs P nothing.
- The same (program, relevant rules) pair always yields the same decisions, so they are
  memoised: the work grows with the number of distinct situations, not with pods x
  classes.
- Class numbers are stable across compilations (a signature keeps the number it had in
  the `previous` ruleset), so a small change produces a small diff.

IPv4 only: pod addresses are IPv4 (single stack); IPv6 CIDRs in policies cannot match an
IPv4 packet and are left out of the address-space cut.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from netpolicy.cluster import ClusterState, Pod
from netpolicy.evaluate import network_policy_selects, subject_selects
from netpolicy.labels import LabelSelector, Operator
from netpolicy.model import (
    Action,
    Direction,
    IPBlock,
    NamedPort,
    NetworkPolicy,
    Networks,
    Peer,
    PodPeer,
    Policy,
    PortMatch,
    PortRange,
    Rule,
)
from netpolicy.ruleset import (
    ALL_PORTS,
    PORT_PROTOCOLS,
    Entry,
    PortKey,
    Rules,
    Ruleset,
    Signature,
)

DIRECTIONS = (Direction.EGRESS, Direction.INGRESS)

ADDRESS_SPACE = (0, 2**32 - 1)
# Protocol ranges without ports (everything but TCP, UDP, SCTP), matched with every port.
OTHER_PROTOCOLS = ((0, 5), (7, 16), (18, 131), (133, 255))

NamedPorts = frozenset[tuple[str, int, int]]  # (name, protocol number, port)


@dataclass(frozen=True, slots=True)
class ProgramRule:
    """One rule of a pod's pipeline, in evaluation order."""

    tier: str  # "admin" | "np" | "baseline"
    policy: Policy
    rule: Rule
    peers: frozenset[Peer] | None

    @property
    def comment(self) -> str:
        return f"{self.policy} {self.rule.name}"


@dataclass(frozen=True, slots=True)
class Program:
    """The rules that apply to one pod in one direction, and whether NetworkPolicy
    isolates it there."""

    direction: Direction
    rules: tuple[ProgramRule, ...]
    isolating: tuple[NetworkPolicy, ...]

    @property
    def has_named_ports(self) -> bool:
        return any(isinstance(p, NamedPort) for r in self.rules for p in (r.rule.ports or ()))


def compile_ruleset(state: ClusterState, node: str, previous: Ruleset | None = None) -> Ruleset:
    """The ruleset that enforces `state` on `node`."""
    return NodeCompiler(node).compile(state, previous)


@dataclass(frozen=True, slots=True)
class _LocalPod:
    """What a local pod's decisions are made of, per direction (kept for fast updates)."""

    address: int
    program: Program
    own_ports: NamedPorts
    unmatched: tuple[tuple[int, int, int, int, Entry], ...]

    @property
    def default(self) -> Entry:
        return self.unmatched[0][4]


class NodeCompiler:
    """Compiles cluster states for one node, keeping what it learnt (peer index, classes,
    each local pod's program) so that the commonest change — a pod added or removed —
    is compiled in time proportional to that pod, not to the cluster. Any other change
    (policies, namespace labels) is a full `compile`. Sans-IO: states in, rulesets out.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self.ruleset: Ruleset | None = None
        self.state: ClusterState | None = None

    # ------------------------------------------------------------------ full
    def compile(self, state: ClusterState, previous: Ruleset | None = None) -> Ruleset:
        previous = previous if previous is not None else self.ruleset
        self.state = state
        self.previous_ids = dict(previous.class_ids) if previous is not None else {}
        self.peers = _peers(state.policies.values())
        self.cidr_peers = [p for p in self.peers if isinstance(p, IPBlock | Networks)]
        self.named = _referenced_port_names(state.policies.values())
        self.memo: dict[tuple[object, ...], tuple[tuple[int, int, int, int, Entry], ...]] = {}
        self._index_peers()

        pod_members = self._pod_memberships()
        self.class_ids: dict[Signature, int] = {}
        used: set[int] = set()
        # Signatures keep the numbers they had; new ones get the lowest free numbers.
        # Every address of an atom (the space cut at all CIDR boundaries) is in the same
        # CIDR peers, so membership is computed once per atom, not once per pod.
        atoms = _address_atoms(self.cidr_peers)
        self.atom_starts = [lo for lo, _ in atoms]
        self.atom_members = [_cidr_members(self.cidr_peers, lo) for lo, _ in atoms]
        range_sigs: list[tuple[int, int, Signature]] = [
            (lo, hi, (members, frozenset())) for (lo, hi), members in zip(atoms, self.atom_members, strict=True)
        ]
        pod_sigs = {
            pod.key: (pod_members.get(pod.key, frozenset()) | self._cidr_members(int(pod.ip)), self._named_ports(pod))
            for pod in state.pods.values()
        }
        for sig in [s for _, _, s in range_sigs] + list(pod_sigs.values()):
            if sig not in self.class_ids:
                number = self.previous_ids.get(sig, 0)
                if number in used:
                    number = 0
                self.class_ids[sig] = number
                used.add(number)
        self._free = (n for n in itertools.count(1) if n not in used)
        for sig, number in self.class_ids.items():
            if not number:
                self.class_ids[sig] = next(self._free)
        self.members_by_class: dict[int, Signature] = {n: s for s, n in self.class_ids.items()}
        self.classes_by_peer: dict[Peer, set[int]] = defaultdict(set)
        for number, (members, _) in self.members_by_class.items():
            for peer in members:
                self.classes_by_peer[peer].add(number)

        self.cidr_classes = _merge_ranges({(lo, hi): self.class_ids[sig] for lo, hi, sig in range_sigs})
        self.cidr_starts = sorted(self.cidr_classes)
        pod_classes = {}
        for key, sig in pod_sigs.items():
            address = int(state.pods[key].ip)
            if self.class_ids[sig] != _lookup_range(self.cidr_classes, self.cidr_starts, address):
                pod_classes[address] = self.class_ids[sig]

        self.local: dict[tuple[tuple[str, str], Direction], _LocalPod] = {}
        rules: dict[Direction, Rules] = {d: {} for d in DIRECTIONS}
        ports: dict[Direction, dict[PortKey, Entry]] = {d: {} for d in DIRECTIONS}
        defaults: dict[Direction, dict[int, Entry]] = {d: {} for d in DIRECTIONS}
        local = [p for p in state.pods.values() if p.node == self.node]
        for pod in local:
            self._add_local(pod, rules, ports, defaults)
        self.ruleset = Ruleset(self.node, frozenset(int(p.ip) for p in local), self.cidr_classes, pod_classes,
                               rules, defaults, dict(self.class_ids), ports=ports)
        return self.ruleset

    # ------------------------------------------------------------------ incremental
    def add_pod(self, state: ClusterState, pod: Pod) -> Ruleset:
        """`state` is the previous one plus `pod` (same policies and namespaces)."""
        previous = self.ruleset
        if previous is None or self.state is None or pod.key in self.state.pods:
            return self.compile(state)
        self.state = state
        members = self._memberships_of(pod) | self._cidr_members(int(pod.ip))
        sig: Signature = (members, self._named_ports(pod))
        rules = {d: dict(previous.rules[d]) for d in DIRECTIONS}  # per-pod maps shared until changed
        ports = {d: dict(previous.ports[d]) for d in DIRECTIONS}
        defaults = {d: dict(previous.defaults[d]) for d in DIRECTIONS}
        number = self.class_ids.get(sig)
        if number is None:
            number = self.class_ids[sig] = next(self._free)
            self.members_by_class[number] = sig
            for peer in members:
                self.classes_by_peer[peer].add(number)
            # Every local pod decides about the new class (only those whose rules name
            # one of its peers, or resolve named ports on it, get elements).
            for (_, direction), info in self.local.items():
                self._class_elements(info, number, rules[direction])
        pod_classes = dict(previous.pod_classes)
        address = int(pod.ip)
        if number != _lookup_range(self.cidr_classes, self.cidr_starts, address):
            pod_classes[address] = number
        local_pods = previous.local_pods
        if pod.node == self.node:
            self._add_local(pod, rules, ports, defaults)
            local_pods = local_pods | {address}
        self.ruleset = Ruleset(self.node, local_pods, self.cidr_classes, pod_classes, rules, defaults,
                               dict(self.class_ids), previous.pending, ports)
        return self.ruleset

    def remove_pod(self, state: ClusterState, pod: Pod) -> Ruleset:
        """`state` is the previous one without `pod`. Its class stays (numbers are cheap;
        the next full compile drops unused ones)."""
        previous = self.ruleset
        if previous is None or self.state is None or pod.key not in self.state.pods:
            return self.compile(state)
        self.state = state
        address = int(pod.ip)
        pod_classes = {a: c for a, c in previous.pod_classes.items() if a != address}
        rules, ports, defaults = dict(previous.rules), dict(previous.ports), dict(previous.defaults)
        if pod.node == self.node:
            for direction in DIRECTIONS:
                self.local.pop((pod.key, direction), None)
                rules[direction] = {a: m for a, m in previous.rules[direction].items() if a != address}
                ports[direction] = {k: e for k, e in previous.ports[direction].items() if k[0] != address}
                defaults[direction] = {a: e for a, e in previous.defaults[direction].items() if a != address}
        self.ruleset = Ruleset(self.node, previous.local_pods - {address}, self.cidr_classes, pod_classes, rules,
                               defaults, dict(self.class_ids), previous.pending, ports)
        return self.ruleset

    # ------------------------------------------------------------------ elements
    def _add_local(self, pod: Pod, rules: dict[Direction, Rules],
                   ports: dict[Direction, dict[PortKey, Entry]], defaults: dict[Direction, dict[int, Entry]]) -> None:
        address = int(pod.ip)
        for direction in DIRECTIONS:
            program = self._program(pod, direction)
            if not program.rules and not program.isolating:
                continue
            own = self._named_ports(pod) if direction is Direction.INGRESS else frozenset()
            info = _LocalPod(address, program, own, self._decisions(program, frozenset(), own))
            self.local[(pod.key, direction)] = info
            if not info.default.allow:
                defaults[direction][address] = info.default
            # Peer-independent decisions (rules without peers, e.g. "port 80 from anyone").
            for p_lo, p_hi, lo, hi, entry in info.unmatched[1:]:
                if entry.allow != info.default.allow:
                    ports[direction][(address, p_lo, p_hi, lo, hi)] = entry
            if program.has_named_ports and direction is Direction.EGRESS:
                candidates: Iterable[int] = self.members_by_class
            else:
                found: set[int] = set()
                for r in program.rules:
                    for peer in r.peers or ():
                        found |= self.classes_by_peer.get(peer, set())
                candidates = found
            for number in candidates:
                self._class_elements(info, number, rules[direction])

    def _class_elements(self, info: _LocalPod, number: int, out: Rules) -> None:
        """Elements for one local pod and one peer class: where the class's decision
        differs from what the fallback maps (port map, then default) would give."""
        members, peer_ports = self.members_by_class[number]
        program = info.program
        egress = program.direction is Direction.EGRESS
        named_here = egress and program.has_named_ports  # named ports resolve on this peer
        if not named_here and all(r.peers is None or r.peers.isdisjoint(members) for r in program.rules):
            return  # decides exactly like an unmatched peer: the fallback maps cover it
        dest_ports = peer_ports if egress else info.own_ports
        decisions = self._decisions(program, members, dest_ports)
        found = {(number, number, p_lo, p_hi, lo, hi): entry
                 for p_lo, p_hi, lo, hi, entry, fallback in _overlay(decisions, info.unmatched)
                 if entry.allow != fallback.allow}
        if found:
            # A new map object: the previous ruleset may share the old one.
            out[info.address] = {**out.get(info.address, {}), **found}

    # ------------------------------------------------------------------ peers
    def _index_peers(self) -> None:
        """Pod-selector peers by one `In` requirement (key, value) they need, so that a
        pod is only matched against peers that could select it."""
        self.peers_by_label: dict[tuple[str, str], list[PodPeer]] = defaultdict(list)
        self.unindexed: list[PodPeer] = []
        for peer in self.peers:
            if not isinstance(peer, PodPeer):
                continue
            req = next((r for r in peer.pods.requirements if r.operator is Operator.IN), None)
            if req is None:
                self.unindexed.append(peer)
            else:
                for value in req.values:
                    self.peers_by_label[(req.key, value)].append(peer)

    def _memberships_of(self, pod: Pod) -> frozenset[Peer]:
        assert self.state is not None
        candidates = list(self.unindexed)
        for item in pod.labels.items():
            candidates += self.peers_by_label.get(item, ())
        return frozenset(p for p in candidates if subject_selects(self.state, p, pod))

    def _pod_memberships(self) -> dict[tuple[str, str], frozenset[Peer]]:
        """For every pod, the pod-selector peers it satisfies. Pods with the same namespace
        and labels are matched once; a selector with an `In` requirement only looks at the
        pods carrying one of its values."""
        assert self.state is not None
        groups: dict[tuple[str, frozenset[tuple[str, str]]], list[Pod]] = defaultdict(list)
        for pod in self.state.pods.values():
            groups[(pod.namespace, frozenset(pod.labels.items()))].append(pod)
        by_label: dict[tuple[str, str], list[tuple[str, frozenset[tuple[str, str]]]]] = defaultdict(list)
        for group in groups:
            for item in group[1]:
                by_label[item].append(group)
        ns_match: dict[tuple[LabelSelector, str], bool] = {}
        members: dict[tuple[str, frozenset[tuple[str, str]]], set[Peer]] = defaultdict(set)
        for peer in self.peers:
            if not isinstance(peer, PodPeer):
                continue
            for group in _candidates(peer.pods, groups, by_label):
                namespace, labels = group
                if peer.own_namespace is not None:
                    if namespace != peer.own_namespace:
                        continue
                elif peer.namespaces is not None:
                    key = (peer.namespaces, namespace)
                    if key not in ns_match:
                        ns_match[key] = peer.namespaces.matches(self.state.namespace_labels(namespace))
                    if not ns_match[key]:
                        continue
                if peer.pods.matches(dict(labels)):
                    members[group].add(peer)
        return {pod.key: frozenset(members.get(group, ())) for group, pods in groups.items() for pod in pods}

    def _cidr_members(self, address: int) -> frozenset[Peer]:
        return self.atom_members[bisect.bisect_right(self.atom_starts, address) - 1]

    def _named_ports(self, pod: Pod) -> NamedPorts:
        return frozenset((p.name, p.protocol.number, p.port) for p in pod.ports if p.name in self.named)

    # ------------------------------------------------------------------ programs
    def _program(self, pod: Pod, direction: Direction) -> Program:
        state = self.state
        assert state is not None
        rules: list[ProgramRule] = []
        for anp in state.admin_policies:
            if subject_selects(state, anp.subject, pod):
                rules += [ProgramRule("admin", anp, r, _peer_set(r)) for r in _rules(anp, direction)]
        isolating = tuple(p for p in state.network_policies.get(pod.namespace, ()) if network_policy_selects(p, pod, direction))
        for np in isolating:
            rules += [ProgramRule("np", np, r, _peer_set(r)) for r in _rules(np, direction)]
        banp = state.baseline_policy
        if banp is not None and subject_selects(state, banp.subject, pod):
            rules += [ProgramRule("baseline", banp, r, _peer_set(r)) for r in _rules(banp, direction)]
        return Program(direction, tuple(rules), isolating)

    def _decisions(self, program: Program, members: frozenset[Peer], dest_ports: NamedPorts) -> tuple[tuple[int, int, int, int, Entry], ...]:
        """(protocol first, last, port first, last, entry) covering the whole
        protocol x port space for a peer of the given class; the first tuple is always
        the non-port protocols."""
        relevant = tuple(r for r in program.rules if r.peers is None or not r.peers.isdisjoint(members))
        key = (program, relevant, dest_ports if program.has_named_ports else None)
        cached = self.memo.get(key)
        if cached is not None:
            return cached
        resolved = [(r, _resolve(r.rule.ports, dest_ports)) for r in relevant]
        out: list[tuple[int, int, int, int, Entry]] = []
        other = _decide(program, [(r, None) for r, ranges in resolved if ranges is None])
        out += [(lo, hi, *ALL_PORTS, other) for lo, hi in OTHER_PROTOCOLS]
        for proto in PORT_PROTOCOLS:
            cuts = {ALL_PORTS[0], ALL_PORTS[1] + 1}
            for _, ranges in resolved:
                for p, lo, hi in ranges or ():
                    if p == proto:
                        cuts |= {lo, hi + 1}
            bounds = sorted(cuts)
            previous: tuple[int, int, Entry] | None = None
            for lo, nxt in itertools.pairwise(bounds):
                hi = nxt - 1
                matching = [(r, None) for r, ranges in resolved
                            if ranges is None or any(p == proto and a <= lo <= b for p, a, b in ranges)]
                entry = _decide(program, matching)
                if previous is not None and previous[2] == entry and previous[1] + 1 == lo:
                    previous = (previous[0], hi, entry)
                else:
                    if previous is not None:
                        out.append((proto, proto, previous[0], previous[1], previous[2]))
                    previous = (lo, hi, entry)
            assert previous is not None
            out.append((proto, proto, previous[0], previous[1], previous[2]))
        result = tuple(out)
        self.memo[key] = result
        return result


def _decide(program: Program, matching: Sequence[tuple[ProgramRule, None]]) -> Entry:
    """The tier pipeline over the rules that match the packet, in program order."""
    for r, _ in matching:
        if r.tier != "admin" or r.rule.action is Action.PASS:
            break  # a Pass skips the rest of the admin tier, as does its end
        return Entry(r.rule.action is Action.ALLOW, r.comment)
    for r, _ in matching:
        if r.tier == "np":
            return Entry(True, r.comment)
    if program.isolating:
        return Entry(False, "isolated by " + ", ".join(str(p) for p in program.isolating))
    for r, _ in matching:
        if r.tier == "baseline":
            return Entry(r.rule.action is Action.ALLOW, r.comment)
    return Entry(True, "default allow")


# --------------------------------------------------------------------------- helpers
def _rules(policy: Policy, direction: Direction) -> tuple[Rule, ...]:
    return policy.ingress if direction is Direction.INGRESS else policy.egress


def _peer_set(rule: Rule) -> frozenset[Peer] | None:
    return None if rule.peers is None else frozenset(rule.peers)


def _peers(policies: Iterable[Policy]) -> list[Peer]:
    seen: dict[Peer, None] = {}
    for policy in policies:
        for rule in (*policy.ingress, *policy.egress):
            for peer in rule.peers or ():
                seen.setdefault(peer, None)
    return list(seen)


def _referenced_port_names(policies: Iterable[Policy]) -> frozenset[str]:
    return frozenset(
        p.name for policy in policies for rule in (*policy.ingress, *policy.egress)
        for p in rule.ports or () if isinstance(p, NamedPort)
    )


def _candidates(selector: LabelSelector, groups: Mapping[tuple[str, frozenset[tuple[str, str]]], object],
                by_label: Mapping[tuple[str, str], list[tuple[str, frozenset[tuple[str, str]]]]]) -> Iterable[tuple[str, frozenset[tuple[str, str]]]]:
    best: list[tuple[str, frozenset[tuple[str, str]]]] | None = None
    for req in selector.requirements:
        if req.operator is Operator.IN:
            found = [g for value in req.values for g in by_label.get((req.key, value), ())]
            if best is None or len(found) < len(best):
                best = found
    return groups if best is None else best


def _cidr_members(peers: Sequence[Peer], address: int) -> frozenset[Peer]:
    ip = ipaddress.IPv4Address(address)
    return frozenset(p for p in peers if isinstance(p, IPBlock | Networks) and p.contains(ip))


def _address_atoms(peers: Sequence[Peer]) -> list[tuple[int, int]]:
    """The IPv4 space cut at every boundary of every CIDR the peers name."""
    cuts = {ADDRESS_SPACE[0], ADDRESS_SPACE[1] + 1}
    for peer in peers:
        networks = (peer.cidr, *peer.exceptions) if isinstance(peer, IPBlock) else peer.cidrs if isinstance(peer, Networks) else ()
        for net in networks:
            if net.version == 4:
                cuts |= {int(net.network_address), int(net.broadcast_address) + 1}
    bounds = sorted(cuts)
    return [(lo, nxt - 1) for lo, nxt in itertools.pairwise(bounds)]


def _merge_ranges(ranges: Mapping[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    merged: dict[tuple[int, int], int] = {}
    current: list[int] | None = None  # [first, last, class]
    for first, last in sorted(ranges):
        number = ranges[(first, last)]
        if current is not None and current[2] == number and current[1] + 1 == first:
            current[1] = last
            continue
        if current is not None:
            merged[(current[0], current[1])] = current[2]
        current = [first, last, number]
    if current is not None:
        merged[(current[0], current[1])] = current[2]
    return merged


def _overlay(decisions: Sequence[tuple[int, int, int, int, Entry]], fallback: Sequence[tuple[int, int, int, int, Entry]]
             ) -> Iterator[tuple[int, int, int, int, Entry, Entry]]:
    """The pieces of the protocol x port space on which both lists are constant, with
    the entry of each (both lists cover the space, protocol by protocol, in order)."""
    def by_protocol(items: Sequence[tuple[int, int, int, int, Entry]]) -> dict[tuple[int, int], list[tuple[int, int, Entry]]]:
        out: dict[tuple[int, int], list[tuple[int, int, Entry]]] = defaultdict(list)
        for p_lo, p_hi, lo, hi, entry in items:
            out[(p_lo, p_hi)].append((lo, hi, entry))
        return out

    mine, theirs = by_protocol(decisions), by_protocol(fallback)
    for protocols, pieces in mine.items():
        other = theirs[protocols]
        i = j = 0
        while i < len(pieces) and j < len(other):
            lo = max(pieces[i][0], other[j][0])
            hi = min(pieces[i][1], other[j][1])
            yield (*protocols, lo, hi, pieces[i][2], other[j][2])
            if pieces[i][1] == hi:
                i += 1
            if other[j][1] == hi:
                j += 1


def _lookup_range(ranges: Mapping[tuple[int, int], int], starts: Sequence[tuple[int, int]], address: int) -> int:
    i = bisect.bisect_right(starts, (address, 2**33)) - 1
    first, last = starts[i]
    assert first <= address <= last
    return ranges[(first, last)]


def _resolve(ports: tuple[PortMatch, ...] | None, dest_ports: NamedPorts) -> list[tuple[int, int, int]] | None:
    """A rule's ports as (protocol number, first, last); None = every port of every protocol."""
    if ports is None:
        return None
    out = []
    for match in ports:
        if isinstance(match, PortRange):
            out.append((match.protocol.number, match.first, match.last))
        else:
            want = None if match.protocol is None else match.protocol.number
            out += [(proto, port, port) for name, proto, port in dest_ports
                    if name == match.name and (want is None or proto == want)]
    return out
