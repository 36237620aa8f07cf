"""A node's compiled policy ruleset, and its rendering as libnftables JSON: the whole
table (an atomic replacement) or the difference between two rulesets (element changes).

Layout of the table (`inet tulle` unless named otherwise):

    set  pending          pod IPs not yet programmed: dropped both ways (fail-closed)
    set  local_pods       this node's pod IPs
    map  cidr_class       address interval -> peer class (covers all of IPv4)
    map  pod_class        pod IP -> peer class, where it differs from its interval's
    map  egress_pods      src pod -> goto its chain e_<pod hex> (pods with class decisions)
    map  e_<pod hex>      class(dst) . l4proto . dport -> return | drop, for that pod
    map  egress_ports     src pod . l4proto . dport -> return | drop (any peer)
    map  egress_default   src pod -> drop (pods whose unmatched traffic is denied)
    ingress_pods, i_<pod hex>, ingress_ports, ingress_default: the same for destinations
    chain forward         hook forward, priority filter: established/related accept,
                          pending drop, local sources -> egress, local destinations -> ingress
    chain egress, ingress classify the peer into the packet mark, then the verdict maps
    chain e_<pod hex>, i_<pod hex>   that pod's class map, then the shared fallbacks

Per packet, per direction: two class lookups, one hash lookup to find the pod's chain,
then at most three verdict maps — the pod's own (only its elements, so its size does not
grow with the cluster), the port map, the default map — whatever the number of policies
and pods. The maps go from the most specific to the least: a (pod, class) element exists
only where that class's decision differs from the (pod, port) one, which exists only
where it differs from the pod's default. Elements carry counters and a comment naming
the policy and rule that decided them. Denied traffic is dropped, never rejected.

`diff_document` turns one ruleset into the next with element changes, plus the creation
or removal of a pod's map and chain when a local pod gains or loses class decisions —
one transaction that the kernel applies atomically. The packet mark is used as scratch
space inside the chains (the classifier's output); nothing else on the node may rely on a
mark across the forward hook.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from netpolicy.model import Direction, Peer

TABLE = "tulle"
FAMILY = "inet"
ALL_PORTS = (0, 65535)
PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: the protocols whose ports policies name
COMMENT_MAX = 127  # libnftnl's limit on element comments, minus the terminator

# (class first, class last, protocol first, last, port first, last)
ClassKey = tuple[int, int, int, int, int, int]
# (pod address, protocol first, last, port first, last)
PortKey = tuple[int, int, int, int, int]
Signature = tuple[frozenset[Peer], frozenset[tuple[str, int, int]]]


class Entry(NamedTuple):
    """A decision: allow (`return` to the caller chain) or drop, and what decided it. A
    tuple, so that comparing two rulesets' maps is done at C speed."""

    allow: bool
    comment: str

    @property
    def verdict(self) -> str:
        return "return" if self.allow else "drop"


# A direction's class decisions: local pod address -> that pod's map.
Rules = dict[int, Mapping[ClassKey, Entry]]


@dataclass(frozen=True)
class Ruleset:
    node: str
    local_pods: frozenset[int] = frozenset()
    cidr_classes: Mapping[tuple[int, int], int] = field(default_factory=lambda: {(0, 2**32 - 1): 1})
    pod_classes: Mapping[int, int] = field(default_factory=dict)
    rules: Mapping[Direction, Mapping[int, Mapping[ClassKey, Entry]]] = field(default_factory=dict)
    defaults: Mapping[Direction, Mapping[int, Entry]] = field(default_factory=dict)
    class_ids: Mapping[Signature, int] = field(default_factory=dict)
    pending: frozenset[int] = frozenset()
    ports: Mapping[Direction, Mapping[PortKey, Entry]] = field(default_factory=dict)

    def with_pending(self, addresses: Iterable[int]) -> Ruleset:
        return Ruleset(self.node, self.local_pods, self.cidr_classes, self.pod_classes, self.rules,
                       self.defaults, self.class_ids, self.pending | frozenset(addresses), self.ports)

    @property
    def element_count(self) -> int:
        return (len(self.local_pods) + len(self.cidr_classes) + len(self.pod_classes)
                + sum(len(m) for r in self.rules.values() for m in r.values())
                + sum(len(m) for m in self.defaults.values())
                + sum(len(m) for m in self.ports.values()))


# --------------------------------------------------------------------------- rendering
def _ip(address: int) -> str:
    return str(ipaddress.IPv4Address(address))


def _span(first: int, last: int, render: Any = None) -> Any:
    f = render(first) if render else first
    return f if first == last else {"range": [f, render(last) if render else last]}


def _commented(value: Any, comment: str) -> Any:
    return {"elem": {"val": value, "comment": comment[:COMMENT_MAX]}}


def _verdict(entry: Entry) -> Any:
    return {entry.verdict: None}


_SHARED = ("pending", "local_pods", "cidr_class", "pod_class",
           "egress_pods", "egress_ports", "egress_default", "ingress_pods", "ingress_ports", "ingress_default")
_PREFIX = {Direction.EGRESS: "e", Direction.INGRESS: "i"}


def pod_chain(direction: Direction, address: int) -> str:
    """The name of a local pod's chain and map in one direction: e_0af4000a."""
    return f"{_PREFIX[direction]}_{address:08x}"


def _contents(ruleset: Ruleset) -> dict[str, Mapping[Any, Any]]:
    """Every shared set/map's elements as {key: value}, in the model's own terms."""
    out: dict[str, Mapping[Any, Any]] = {
        "pending": dict.fromkeys(ruleset.pending),
        "local_pods": dict.fromkeys(ruleset.local_pods),
        "cidr_class": ruleset.cidr_classes,
        "pod_class": ruleset.pod_classes,
    }
    for direction in (Direction.EGRESS, Direction.INGRESS):
        name = direction.value.lower()
        out[f"{name}_pods"] = {a: pod_chain(direction, a) for a, m in ruleset.rules.get(direction, {}).items() if m}
        out[f"{name}_ports"] = ruleset.ports.get(direction, {})
        out[f"{name}_default"] = ruleset.defaults.get(direction, {})
    return out


def _pod_maps(ruleset: Ruleset) -> dict[str, tuple[Direction, int, Mapping[ClassKey, Entry]]]:
    return {pod_chain(d, a): (d, a, m) for d in (Direction.EGRESS, Direction.INGRESS)
            for a, m in ruleset.rules.get(d, {}).items() if m}


def _render(name: str, key: Any, value: Any) -> tuple[Any, Any]:
    """(nft element key, nft value or None for plain sets)."""
    if name in ("pending", "local_pods"):
        return _ip(key), None
    if name == "cidr_class":
        return _span(key[0], key[1], _ip), value
    if name == "pod_class":
        return _ip(key), value
    if name.endswith("_pods"):
        return _ip(key), {"goto": {"target": value}}
    if name.endswith("_ports"):
        # The port is always a range: nft 1.0.6 cannot delete an element of an interval
        # map whose fields are all single values.
        concat = [_ip(key[0]), _span(key[1], key[2]), {"range": [key[3], key[4]]}]
        return _commented({"concat": concat}, value.comment), _verdict(value)
    if name.endswith("_default"):
        return _commented(_ip(key), value.comment), _verdict(value)
    # a pod's class map
    concat = [_span(key[0], key[1]), _span(key[2], key[3]), {"range": [key[4], key[5]]}]
    return _commented({"concat": concat}, value.comment), _verdict(value)


def _sets(table: str) -> list[dict[str, Any]]:
    base = {"family": FAMILY, "table": table}
    sets: list[dict[str, Any]] = [
        {"set": {**base, "name": "pending", "type": "ipv4_addr"}},
        {"set": {**base, "name": "local_pods", "type": "ipv4_addr"}},
        {"map": {**base, "name": "cidr_class", "type": "ipv4_addr", "map": "mark", "flags": ["interval"]}},
        {"map": {**base, "name": "pod_class", "type": "ipv4_addr", "map": "mark"}},
    ]
    for name in ("egress", "ingress"):
        sets.append({"map": {**base, "name": f"{name}_pods", "type": "ipv4_addr", "map": "verdict"}})
        sets.append({"map": {**base, "name": f"{name}_ports", "type": ["ipv4_addr", "inet_proto", "inet_service"],
                             "map": "verdict", "flags": ["interval"], "stmt": [{"counter": None}]}})
        sets.append({"map": {**base, "name": f"{name}_default", "type": "ipv4_addr", "map": "verdict",
                             "stmt": [{"counter": None}]}})
    return sets


def _rule(table: str, chain: str, expr: list[Any], comment: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"family": FAMILY, "table": table, "chain": chain, "expr": expr}
    if comment:
        rule["comment"] = comment
    return {"rule": rule}


def _addr(f: str) -> Any:
    return {"payload": {"protocol": "ip", "field": f}}


_MARK = {"meta": {"key": "mark"}}
_L4 = [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]
_OWN = {Direction.EGRESS: "saddr", Direction.INGRESS: "daddr"}


def _fallbacks(table: str, chain: str, direction: Direction) -> list[dict[str, Any]]:
    own, name = _addr(_OWN[direction]), direction.value.lower()
    return [
        _rule(table, chain, [{"vmap": {"key": {"concat": [own, *_L4]}, "data": f"@{name}_ports"}}], "decisions for any peer"),
        _rule(table, chain, [{"vmap": {"key": own, "data": f"@{name}_default"}}], "isolated pods: everything else"),
    ]


def _chains(table: str) -> list[dict[str, Any]]:
    def member(f: str, s: str) -> Any:
        return {"match": {"op": "==", "left": _addr(f), "right": f"@{s}"}}

    out: list[dict[str, Any]] = [
        {"chain": {"family": FAMILY, "table": table, "name": "forward", "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "accept"}},
        {"chain": {"family": FAMILY, "table": table, "name": "egress"}},
        {"chain": {"family": FAMILY, "table": table, "name": "ingress"}},
        _rule(table, "forward", [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                                 {"accept": None}], "return traffic of allowed connections"),
        _rule(table, "forward", [member("saddr", "pending"), {"counter": None}, {"drop": None}], "pod not yet programmed"),
        _rule(table, "forward", [member("daddr", "pending"), {"counter": None}, {"drop": None}], "pod not yet programmed"),
        _rule(table, "forward", [member("saddr", "local_pods"), {"jump": {"target": "egress"}}], "egress of this node's pods"),
        _rule(table, "forward", [member("daddr", "local_pods"), {"jump": {"target": "ingress"}}], "ingress of this node's pods"),
    ]
    for direction, peer in ((Direction.EGRESS, "daddr"), (Direction.INGRESS, "saddr")):
        chain = direction.value.lower()
        out += [
            _rule(table, chain, [{"mangle": {"key": _MARK, "value": {"map": {"key": _addr(peer), "data": "@cidr_class"}}}}], "peer class by address range"),
            _rule(table, chain, [{"mangle": {"key": _MARK, "value": {"map": {"key": _addr(peer), "data": "@pod_class"}}}}], "peer class of a pod"),
            _rule(table, chain, [{"vmap": {"key": _addr(_OWN[direction]), "data": f"@{chain}_pods"}}], "pods with per-class decisions"),
            *_fallbacks(table, chain, direction),
        ]
    return out


def _pod_objects(table: str, name: str, direction: Direction) -> list[dict[str, Any]]:
    """A local pod's class map and the chain that consults it (then the fallbacks; the
    chain is entered by goto, so its `return` ends the whole direction)."""
    return [
        {"add": {"map": {"family": FAMILY, "table": table, "name": name, "type": ["mark", "inet_proto", "inet_service"],
                         "map": "verdict", "flags": ["interval"], "stmt": [{"counter": None}]}}},
        {"add": {"chain": {"family": FAMILY, "table": table, "name": name}}},
        {"add": _rule(table, name, [{"vmap": {"key": {"concat": [_MARK, *_L4]}, "data": f"@{name}"}}], "decisions for this peer class")},
        *({"add": r} for r in _fallbacks(table, name, direction)),
    ]


def _bare(key: Any) -> Any:
    """An element's key without its comment (deletion names the key only)."""
    return key["elem"]["val"] if isinstance(key, dict) and "elem" in key else key


def _element_command(verb: str, table: str, name: str, items: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    elems = [key if value is None else [key, value] for key, value in items]
    return {verb: {"element": {"family": FAMILY, "table": table, "name": name, "elem": elems}}}


def full_document(ruleset: Ruleset, table: str = TABLE) -> dict[str, Any]:
    """Replaces the table atomically (add, delete, re-create, fill: one transaction), so
    traffic sees either the old ruleset or the new one, never none."""
    ref = {"family": FAMILY, "name": table}
    commands: list[dict[str, Any]] = [{"add": {"table": ref}}, {"delete": {"table": ref}}, {"add": {"table": ref}}]
    commands += [{"add": obj} for obj in _sets(table)]
    commands += [{"add": obj} for obj in _chains(table)]
    for name, (direction, _, elements) in _pod_maps(ruleset).items():
        commands += _pod_objects(table, name, direction)
        commands.append(_element_command("add", table, name, (_render(name, k, v) for k, v in elements.items())))
    for name, elements in _contents(ruleset).items():
        if elements:
            commands.append(_element_command("add", table, name, (_render(name, k, v) for k, v in elements.items())))
    return {"nftables": commands}


def _element_diff(table: str, name: str, b: Mapping[Any, Any], a: Mapping[Any, Any]
                  ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if b is a or b == a:
        return None, None
    gone = [(k, v) for k, v in b.items() if k not in a or a[k] != v]
    came = [(k, v) for k, v in a.items() if k not in b or b[k] != v]
    delete = _element_command("delete", table, name, ((_bare(_render(name, k, v)[0]), None) for k, v in gone)) if gone else None
    add = _element_command("add", table, name, (_render(name, k, v) for k, v in came)) if came else None
    return delete, add


def diff_document(old: Ruleset, new: Ruleset, table: str = TABLE) -> dict[str, Any]:
    """The changes that turn `old` (as applied) into `new`, in one transaction; empty
    when nothing changed. Order: element deletions (dispatch entries first, so that a
    pod's chain is unreferenced), removal of pods' chains and maps, creation of new
    ones, then element additions (a dispatch entry after the chain it names). A changed
    element (same key, new verdict or comment) is deleted and re-added."""
    before, after = _contents(old), _contents(new)
    old_pods, new_pods = _pod_maps(old), _pod_maps(new)
    deletes, removals, creations, adds = [], [], [], []
    for name in _SHARED:
        delete, add = _element_diff(table, name, before[name], after[name])
        deletes += [delete] if delete else []
        adds += [add] if add else []
    for name in old_pods.keys() - new_pods.keys():
        removals += [{"delete": {"chain": {"family": FAMILY, "table": table, "name": name}}},
                     {"delete": {"map": {"family": FAMILY, "table": table, "name": name}}}]
    for name in new_pods.keys() - old_pods.keys():
        direction, _, elements = new_pods[name]
        creations += _pod_objects(table, name, direction)
        creations.append(_element_command("add", table, name, (_render(name, k, v) for k, v in elements.items())))
    for name in new_pods.keys() & old_pods.keys():
        delete, add = _element_diff(table, name, old_pods[name][2], new_pods[name][2])
        deletes += [delete] if delete else []
        adds += [add] if add else []
    return {"nftables": deletes + removals + creations + adds}


def counters_by_rule(listing: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(packets, bytes) per deciding policy rule, summed over every element that names
    it, from a `list table` JSON document: which policy rule allowed or dropped how much
    new-connection traffic on this node (the operator's view of the verdict maps)."""
    totals: dict[str, tuple[int, int]] = {}
    for obj in listing.get("nftables", ()):
        body = obj.get("map")
        if not body or body.get("map") != "verdict":
            continue
        for key, _ in body.get("elem", ()):
            elem = key.get("elem") if isinstance(key, dict) else None
            if not elem or "comment" not in elem or "counter" not in elem:
                continue
            packets, octets = totals.get(elem["comment"], (0, 0))
            totals[elem["comment"]] = (packets + elem["counter"]["packets"], octets + elem["counter"]["bytes"])
    return totals
