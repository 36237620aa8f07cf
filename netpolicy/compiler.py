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
  and rule. P's *default* is the decision for a peer that matches no predicate; only
  decisions that differ from it become elements of the verdict map
  `pod . class . l4proto . dport`, the default goes to a map keyed by the pod.
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
from collections.abc import Iterable, Mapping, Sequence
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
from netpolicy.ruleset import ALL_PORTS, PORT_PROTOCOLS, Entry, Key, Ruleset, Signature

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
    return _Compilation(state, node, previous).ruleset()


class _Compilation:
    def __init__(self, state: ClusterState, node: str, previous: Ruleset | None) -> None:
        self.state = state
        self.node = node
        self.previous_ids = dict(previous.class_ids) if previous is not None else {}
        self.peers = _peers(state.policies.values())
        self.named = _referenced_port_names(state.policies.values())
        self.memo: dict[tuple[object, ...], tuple[tuple[int, int, int, int, Entry], ...]] = {}

    def ruleset(self) -> Ruleset:
        pod_members = self._pod_memberships()
        cidr_peers = [p for p in self.peers if isinstance(p, IPBlock | Networks)]
        atoms = _address_atoms(cidr_peers)

        class_ids: dict[Signature, int] = {}
        used = set()

        def class_of(signature: Signature) -> int:
            if signature not in class_ids:
                number = self.previous_ids.get(signature)
                if number is None or number in used:
                    number = 0
                class_ids[signature] = number
                if number:
                    used.add(number)
            return class_ids[signature]

        # Keep the numbers of surviving signatures first, then number the new ones.
        range_sigs = [(first, last, _signature(_cidr_members(cidr_peers, first), frozenset())) for first, last in atoms]
        pod_sigs = {
            pod.key: _signature(pod_members.get(pod.key, frozenset()) | _cidr_members(cidr_peers, int(pod.ip)), self._named_ports(pod))
            for pod in self.state.pods.values()
        }
        for _, _, sig in range_sigs:
            class_of(sig)
        for sig in pod_sigs.values():
            class_of(sig)
        free = (n for n in range(1, 2**31) if n not in used)
        for sig, number in class_ids.items():
            if not number:
                class_ids[sig] = next(free)

        cidr_classes: dict[tuple[int, int], int] = {}
        for first, last, sig in range_sigs:
            cidr_classes[(first, last)] = class_ids[sig]
        cidr_classes = _merge_ranges(cidr_classes)
        starts = sorted(cidr_classes)
        pod_classes = {}
        for key, sig in pod_sigs.items():
            address = int(self.state.pods[key].ip)
            if class_ids[sig] != _lookup_range(cidr_classes, starts, address):
                pod_classes[address] = class_ids[sig]

        members_by_class: dict[int, frozenset[Peer]] = {class_ids[s]: s[0] for s in class_ids}
        ports_by_class: dict[int, NamedPorts] = {class_ids[s]: s[1] for s in class_ids}
        classes_by_peer: dict[Peer, set[int]] = defaultdict(set)
        for number, members in members_by_class.items():
            for peer in members:
                classes_by_peer[peer].add(number)

        local = sorted((p for p in self.state.pods.values() if p.node == self.node), key=lambda p: int(p.ip))
        rules: dict[Direction, dict[Key, Entry]] = {}
        defaults: dict[Direction, dict[int, Entry]] = {}
        for direction in (Direction.EGRESS, Direction.INGRESS):
            rules[direction], defaults[direction] = {}, {}
            for pod in local:
                program = self._program(pod, direction)
                if not program.rules and not program.isolating:
                    continue
                own_ports = self._named_ports(pod) if direction is Direction.INGRESS else frozenset()
                # The decisions for a peer that matches none of the rules' peers; P's
                # default is its verdict for protocols without ports.
                unmatched = self._decisions(program, frozenset(), own_ports)
                default = unmatched[0][4]
                address = int(pod.ip)
                if not default.allow:
                    defaults[direction][address] = default
                # Classes whose decisions can differ from `unmatched`: those in a rule's
                # peers, or every class when named ports resolve on the peer (egress).
                candidates: set[int] = set()
                if program.has_named_ports and direction is Direction.EGRESS:
                    candidates = set(members_by_class)
                else:
                    for r in program.rules:
                        for peer in r.peers or ():
                            candidates |= classes_by_peer.get(peer, set())
                out = rules[direction]
                exceptions = [(p_lo, p_hi, lo, hi, e) for p_lo, p_hi, lo, hi, e in unmatched if e.allow != default.allow]
                if exceptions:
                    for c_lo, c_hi in _gaps(sorted(candidates)):
                        for p_lo, p_hi, lo, hi, entry in exceptions:
                            out[(address, c_lo, c_hi, p_lo, p_hi, lo, hi)] = entry
                for number in sorted(candidates):
                    dest_ports = ports_by_class[number] if direction is Direction.EGRESS else own_ports
                    for p_lo, p_hi, lo, hi, entry in self._decisions(program, members_by_class[number], dest_ports):
                        if entry.allow != default.allow:
                            out[(address, number, number, p_lo, p_hi, lo, hi)] = entry
        return Ruleset(
            node=self.node,
            local_pods=frozenset(int(p.ip) for p in local),
            cidr_classes=cidr_classes,
            pod_classes=pod_classes,
            rules=rules,
            defaults=defaults,
            class_ids=class_ids,
        )

    # ------------------------------------------------------------------ peers
    def _pod_memberships(self) -> dict[tuple[str, str], frozenset[Peer]]:
        """For every pod, the pod-selector peers it satisfies. Pods with the same namespace
        and labels are matched once; a selector with an `In` requirement only looks at the
        pods carrying one of its values."""
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

    def _named_ports(self, pod: Pod) -> NamedPorts:
        return frozenset((p.name, p.protocol.number, p.port) for p in pod.ports if p.name in self.named)

    # ------------------------------------------------------------------ programs
    def _program(self, pod: Pod, direction: Direction) -> Program:
        state = self.state
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

    def _default(self, program: Program, own_ports: NamedPorts) -> Entry:
        """The decision for a peer that matches no predicate, on a protocol without ports
        (only rules without peers and without ports can match it)."""
        for _, _, _, _, entry in self._decisions(program, frozenset(), own_ports):
            return entry
        raise AssertionError("decisions always cover the protocol space")

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


def _signature(members: frozenset[Peer], ports: NamedPorts) -> Signature:
    return (members, ports)


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


def _gaps(numbers: Sequence[int]) -> list[tuple[int, int]]:
    """The class-number ranges (within 0..2^32-1) not in the sorted `numbers`."""
    gaps, start = [], 0
    for n in numbers:
        if n > start:
            gaps.append((start, n - 1))
        start = n + 1
    if start <= 2**32 - 1:
        gaps.append((start, 2**32 - 1))
    return gaps


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
