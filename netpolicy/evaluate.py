"""The policy verdict for one connection attempt: the oracle the nftables ruleset is
tested against, and the reasoning `meshctl netpol explain` shows.

Theory of operation (the APIs' semantics, as a pipeline of tiers):
- A connection src -> dst:port/protocol is allowed when the *egress* side (src as the
  subject, dst as the peer) and the *ingress* side (dst as the subject, src as the peer)
  both allow it. A side whose subject is not a pod of the cluster (an outside address)
  allows everything: policy only governs pods.
- Each side runs the tiers in order until one decides:
  1. AdminNetworkPolicy: the ANPs whose subject selects the pod, by priority (then
     name); inside one, rules in order; the first rule whose peer and port match wins.
     Allow and Deny decide; Pass stops the tier without deciding.
  2. NetworkPolicy: if any NetworkPolicy of the pod's namespace selects it for this
     direction, the pod is isolated: allowed when any rule of any such policy matches,
     denied otherwise. Not isolated: no decision.
  3. BaselineAdminNetworkPolicy: its first matching rule (Allow/Deny) decides.
  4. Default: allow.
- Peers: a pod peer matches pods (never bare addresses); ipBlock and networks peers match
  addresses, pod IPs included. Named ports resolve on the *destination* pod in both
  directions; an address without a pod has no named ports.

Everything here is pure and straightforward on purpose: the compiler computes the same
verdicts another way (equivalence classes, see `netpolicy.ruleset`), and the two are
checked against each other through the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from netpolicy.cluster import ClusterState, Endpoint, Pod
from netpolicy.model import (
    Action,
    AdminNetworkPolicy,
    Direction,
    IPBlock,
    NamedPort,
    NetworkPolicy,
    Networks,
    Peer,
    PodPeer,
    Policy,
    PortMatch,
    Protocol,
    Rule,
)


class Verdict(Enum):
    ALLOW = "allow"
    DENY = "deny"


class Tier(Enum):
    ADMIN = "AdminNetworkPolicy"
    NETWORK_POLICY = "NetworkPolicy"
    BASELINE = "BaselineAdminNetworkPolicy"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Decision:
    """How one side (egress or ingress) was decided, and by what."""

    direction: Direction
    verdict: Verdict
    tier: Tier
    policy: Policy | None = None
    rule: Rule | None = None
    reason: str = ""

    def __str__(self) -> str:
        side = self.direction.value.lower()
        by = f" by {self.policy}" if self.policy is not None else ""
        rule = f" rule {self.rule.name}" if self.rule is not None else ""
        return f"{side}: {self.verdict.value} ({self.tier.value}{by}{rule}){': ' + self.reason if self.reason else ''}"


@dataclass(frozen=True, slots=True)
class Explanation:
    verdict: Verdict
    egress: Decision
    ingress: Decision
    egress_policies: tuple[Policy, ...]
    ingress_policies: tuple[Policy, ...]

    @property
    def deciding(self) -> Decision:
        """The side that denied, or the ingress side when both allowed."""
        return self.egress if self.egress.verdict is Verdict.DENY else self.ingress

    def render(self, src: Endpoint, dst: Endpoint, port: int, protocol: Protocol) -> str:
        """The text of `meshctl netpol explain`: the verdict, then each side with the
        policies that select it and the rule (or the reason) that decided it."""
        lines = [f"{src} -> {dst} {protocol.value}/{port}: {self.verdict.value.upper()}"]
        for title, pod, decision, policies in (("source", src, self.egress, self.egress_policies),
                                                ("destination", dst, self.ingress, self.ingress_policies)):
            selected = ", ".join(str(p) for p in policies) or "none"
            lines.append(f"  {title} {pod} ({decision.direction.value.lower()}): selected by {selected}")
            lines.append(f"    {decision.verdict.value} at tier {decision.tier.value}"
                         + (f", {decision.policy}" if decision.policy is not None else "")
                         + (f" rule {decision.rule.name}" if decision.rule is not None else "")
                         + (f" ({decision.reason})" if decision.reason else ""))
        side = self.deciding
        lines.append(f"  decided by the {side.direction.value.lower()} side")
        return "\n".join(lines)


# --------------------------------------------------------------------------- matching
def subject_selects(state: ClusterState, subject: PodPeer, pod: Pod) -> bool:
    if subject.own_namespace is not None:
        if pod.namespace != subject.own_namespace:
            return False
    elif subject.namespaces is not None and not subject.namespaces.matches(state.namespace_labels(pod.namespace)):
        return False
    return subject.pods.matches(pod.labels)


def peer_matches(state: ClusterState, peer: Peer, endpoint: Endpoint) -> bool:
    if isinstance(peer, PodPeer):
        return isinstance(endpoint, Pod) and subject_selects(state, peer, endpoint)
    address = endpoint.ip if isinstance(endpoint, Pod) else endpoint
    if isinstance(peer, IPBlock | Networks):
        return peer.contains(address)
    raise TypeError(peer)


def port_matches(ports: tuple[PortMatch, ...] | None, destination: Endpoint, protocol: Protocol, port: int) -> bool:
    if ports is None:
        return True
    for match in ports:
        if isinstance(match, NamedPort):
            if isinstance(destination, Pod) and (protocol, port) in destination.resolve(match):
                return True
        elif match.matches(protocol, port):
            return True
    return False


def rule_matches(state: ClusterState, rule: Rule, peer: Endpoint, destination: Endpoint, protocol: Protocol, port: int) -> bool:
    if rule.peers is not None and not any(peer_matches(state, p, peer) for p in rule.peers):
        return False
    return port_matches(rule.ports, destination, protocol, port)


def network_policy_selects(policy: NetworkPolicy, pod: Pod, direction: Direction) -> bool:
    return direction in policy.policy_types and policy.namespace == pod.namespace and policy.pod_selector.matches(pod.labels)


def _rules(policy: Policy, direction: Direction) -> tuple[Rule, ...]:
    return policy.ingress if direction is Direction.INGRESS else policy.egress


def selecting_policies(state: ClusterState, pod: Pod, direction: Direction) -> tuple[Policy, ...]:
    """Every policy that applies to `pod` in `direction`, in tier order."""
    admin: list[Policy] = [p for p in state.admin_policies if subject_selects(state, p.subject, pod) and _rules(p, direction)]
    nps: list[Policy] = [p for p in state.network_policies.get(pod.namespace, ()) if network_policy_selects(p, pod, direction)]
    banp = state.baseline_policy
    base: list[Policy] = [banp] if banp is not None and subject_selects(state, banp.subject, pod) and _rules(banp, direction) else []
    return (*admin, *nps, *base)


# --------------------------------------------------------------------------- tiers
def _decide_side(state: ClusterState, direction: Direction, subject: Endpoint, peer: Endpoint,
                 destination: Endpoint, protocol: Protocol, port: int) -> Decision:
    if not isinstance(subject, Pod):
        return Decision(direction, Verdict.ALLOW, Tier.DEFAULT, reason="not a pod of the cluster")
    passed: tuple[AdminNetworkPolicy, Rule] | None = None
    for anp in state.admin_policies:
        if not subject_selects(state, anp.subject, subject):
            continue
        rule = _first_match(state, _rules(anp, direction), peer, destination, protocol, port)
        if rule is None:
            continue
        if rule.action is Action.PASS:
            passed = (anp, rule)
            break
        verdict = Verdict.ALLOW if rule.action is Action.ALLOW else Verdict.DENY
        return Decision(direction, verdict, Tier.ADMIN, anp, rule)

    isolating = [p for p in state.network_policies.get(subject.namespace, ()) if network_policy_selects(p, subject, direction)]
    for np in isolating:
        rule = _first_match(state, _rules(np, direction), peer, destination, protocol, port)
        if rule is not None:
            return Decision(direction, Verdict.ALLOW, Tier.NETWORK_POLICY, np, rule)
    if isolating:
        names = ", ".join(p.name for p in isolating)
        return Decision(direction, Verdict.DENY, Tier.NETWORK_POLICY, isolating[0], None,
                        f"isolated by {names}; no rule matches")

    banp = state.baseline_policy
    if banp is not None and subject_selects(state, banp.subject, subject):
        rule = _first_match(state, _rules(banp, direction), peer, destination, protocol, port)
        if rule is not None:
            verdict = Verdict.ALLOW if rule.action is Action.ALLOW else Verdict.DENY
            return Decision(direction, verdict, Tier.BASELINE, banp, rule)
    reason = f"passed by {passed[0]} rule {passed[1].name}; nothing else decides" if passed else "no policy decides"
    return Decision(direction, Verdict.ALLOW, Tier.DEFAULT, reason=reason)


def _first_match(state: ClusterState, rules: tuple[Rule, ...], peer: Endpoint, destination: Endpoint,
                 protocol: Protocol, port: int) -> Rule | None:
    for rule in rules:
        if rule_matches(state, rule, peer, destination, protocol, port):
            return rule
    return None


def explain(state: ClusterState, src: Endpoint, dst: Endpoint, port: int, protocol: Protocol) -> Explanation:
    egress = _decide_side(state, Direction.EGRESS, src, dst, dst, protocol, port)
    ingress = _decide_side(state, Direction.INGRESS, dst, src, dst, protocol, port)
    verdict = Verdict.ALLOW if egress.verdict is ingress.verdict is Verdict.ALLOW else Verdict.DENY
    return Explanation(
        verdict,
        egress,
        ingress,
        selecting_policies(state, src, Direction.EGRESS) if isinstance(src, Pod) else (),
        selecting_policies(state, dst, Direction.INGRESS) if isinstance(dst, Pod) else (),
    )


def evaluate(state: ClusterState, src: Endpoint, dst: Endpoint, port: int, protocol: Protocol) -> Verdict:
    """The verdict for a new connection from `src` to `dst` on `port`/`protocol`."""
    return explain(state, src, dst, port, protocol).verdict
