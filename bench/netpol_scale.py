"""Network-policy scale benchmark: compile + apply cost, incremental pod add, and the
per-packet cost of enforcement against a linear iptables ruleset, in one run.

Workload (bench/netpol_workload.py): 10,000 pods in 100 namespaces on 100 nodes (100 pods
on the node under test), 500 apps; policy j selects app j mod 500 and admits two peers
(a pod selector, and a namespace AND pod selector) on one port; one in five also limits
egress to a /24. Everything runs in namespaces this script creates and removes.

1. Compile + apply: the node's ruleset for 100, 1,000 and 10,000 policies over 10,000
   pods, applied as one transaction in a fresh namespace.
2. Incremental: one pod added to the node under 10,000 policies: compile, diff and the
   kernel transaction, timed separately.
3. Per packet: connections per second (wrk with `Connection: close`, so every request is
   a new connection whose SYN crosses the forward hook's policy path; established
   packets are accepted by conntrack in every variant) from a client pod to an nginx
   pod on the node's bridge, with (a) no ruleset, (b) only a conntrack rule (what any
   stateful policy costs), (c) the 10,000-policy Tulle ruleset, (d) the same policies
   as a linear iptables-legacy ruleset, one rule per policy-peer (20,000 rules; the
   flow's own rule last, as a linear engine meets it at worst). Rates are printed as
   ratios to (a) and to (b); variants are interleaved, medians of the rounds.

Usage: sudo .venv/bin/python bench/netpol_scale.py [--seconds 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netpol_workload import CLIENT, SERVER, SERVER_PORT, cluster, make_pod, pod_ip, policy_doc

from netpolicy.applier import NftApplier
from netpolicy.cluster import ClusterState, Pod
from netpolicy.compiler import NodeCompiler, compile_ruleset
from netpolicy.enforcer import NodeEnforcer
from netpolicy.evaluate import peer_matches
from netpolicy.labels import LabelSelector
from netpolicy.model import NetworkPolicy, PodPeer, parse_policy
from netpolicy.ruleset import diff_document, full_document

NODE = "node-0"


def run(*argv: str, netns: str | None = None, check: bool = True, input: str | None = None) -> str:
    cmd = [*(["ip", "netns", "exec", netns] if netns else []), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])}: {done.stderr.strip()}")
    return done.stdout


class Namespaces:
    """Namespaces, links and processes of this run, removed at exit."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dirs: list[str] = []

    def netns(self, role: str) -> str:
        name = f"tl-bench-{role}-{self.token}"
        run("ip", "netns", "add", name)
        self.names.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        for name in reversed(self.names):
            run("ip", "netns", "del", name, check=False)
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.close()


def element_count(document: dict[str, Any]) -> int:
    return sum(len(body["element"]["elem"]) for c in document["nftables"] for body in c.values() if "element" in body)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


# --------------------------------------------------------------------------- 1 + 2
def bench_compile(ns: Namespaces, pods: int) -> ClusterState:
    print(f"\n1. compile + apply, {pods} pods, node {NODE} (100 local pods)")
    print(f"   {'policies':>8} {'compile':>12} {'apply':>12} {'total':>12} {'elements':>9}")
    big: ClusterState | None = None
    for count in (100, 1_000, 10_000):
        state = cluster(pods, count)
        target = NftApplier(ns.netns(f"c{count}"))
        t0 = time.perf_counter()
        ruleset = compile_ruleset(state, NODE)
        t1 = time.perf_counter()
        target.apply(full_document(ruleset))
        t2 = time.perf_counter()
        print(f"   {count:>8} {ms(t1 - t0)} {ms(t2 - t1)} {ms(t2 - t0)} {ruleset.element_count:>9}")
        big = state
    assert big is not None
    return big


def bench_incremental(ns: Namespaces, state: ClusterState) -> None:
    print("\n2. incremental: one pod added to the node under 10,000 policies (NodeEnforcer.add_pod)")
    enforcer = NodeEnforcer(NODE, NftApplier(ns.netns("inc")))
    enforcer.start(state)
    compiler = NodeCompiler(NODE)
    compiler.compile(state)
    samples = []
    first = len(state.pods)
    for n in range(5):
        new_pod = make_pod(first + 100 * n)  # pod numbers 10,000 + 100n land on node-0
        assert new_pod.node == NODE
        grown = state.with_pod(new_pod)
        t0 = time.perf_counter()
        after = compiler.add_pod(grown, new_pod)
        t1 = time.perf_counter()
        document = diff_document(enforcer.ruleset, after)  # type: ignore[arg-type]
        t2 = time.perf_counter()
        enforcer.applier.apply(document)
        t3 = time.perf_counter()
        enforcer.ruleset, state = after, grown
        elements = element_count(document)
        samples.append((t1 - t0, t2 - t1, t3 - t2, elements))
    for label, i in (("compile", 0), ("diff", 1), ("kernel transaction", 2)):
        print(f"   {label:<20} median {ms(statistics.median(s[i] for s in samples))}")
    total = statistics.median(s[0] + s[1] + s[2] for s in samples)
    print(f"   {'total':<20} median {ms(total)}   ({samples[0][3]} elements and {len(document['nftables'])} commands "
          "per transaction; aim < 10 ms)")

    print("   one policy replaced (a full compile, applied as an element diff):")
    changed_doc = policy_doc(0)
    changed_doc["spec"]["ingress"][0]["ports"] = [{"port": SERVER_PORT + 1}]
    changed = state.with_policy(parse_policy(changed_doc))
    t0 = time.perf_counter()
    after = compiler.compile(changed, enforcer.ruleset)
    t1 = time.perf_counter()
    document = diff_document(enforcer.ruleset, after)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    enforcer.applier.apply(document)
    t3 = time.perf_counter()
    elements = element_count(document)
    print(f"   compile {ms(t1 - t0)}   diff {ms(t2 - t1)}   kernel transaction {ms(t3 - t2)}   ({elements} elements)")


# --------------------------------------------------------------------------- 3
NGINX_CONF = """daemon off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{ listen {ip}:{port} backlog=4096; location / {{ return 200 "ok\\n"; }} }} }}
"""


# Stateful policy needs connection tracking, which a namespace without rules does not
# run; this variant isolates what the policy lookups themselves cost.
CONNTRACK_ONLY = {"nftables": [
    {"add": {"table": {"family": "inet", "name": "tulle"}}},
    {"add": {"chain": {"family": "inet", "table": "tulle", "name": "forward", "type": "filter", "hook": "forward",
                       "prio": 0, "policy": "accept"}}},
    {"add": {"rule": {"family": "inet", "table": "tulle", "chain": "forward", "expr": [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": None}]}}},
]}


def linear_iptables(state: ClusterState) -> str:
    """One ACCEPT rule per policy-peer (first selected pod, first peer pod, the port); the
    benchmark flow's rule goes last."""
    by_app: dict[str, list[Pod]] = {}
    for pod in state.pods.values():
        by_app.setdefault(pod.labels["app"], []).append(pod)

    def first(selector: LabelSelector, match: Callable[[Pod], bool]) -> str:
        (app,) = next(r.values for r in selector.requirements if r.key == "app")
        return next((str(p.ip) for p in by_app.get(app, ()) if match(p)), "192.0.2.1")

    rules, last = [], None
    client, server = str(pod_ip(CLIENT)), str(pod_ip(SERVER))
    for policy in state.policies.values():
        assert isinstance(policy, NetworkPolicy)
        selected = first(policy.pod_selector, lambda p: p.namespace == policy.namespace)  # noqa: B023
        for rule in policy.ingress:
            port = rule.ports[0].first if rule.ports else 0  # type: ignore[union-attr]
            for peer in rule.peers or ():
                assert isinstance(peer, PodPeer)
                source = first(peer.pods, lambda p: peer_matches(state, peer, p))  # noqa: B023
                line = f"-A FORWARD -s {source}/32 -d {selected}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
                if (source, selected, port) == (client, server, SERVER_PORT):
                    last = line
                else:
                    rules.append(line)
    assert last is not None, "the benchmark flow must be allowed by a rule"
    return "\n".join(["*filter", ":FORWARD ACCEPT [0:0]",
                      "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                      *rules, last, f"-A FORWARD -d {server}/32 -j DROP", "COMMIT", ""])


def wrk(client: str, seconds: float) -> float:
    out = run("wrk", "-t1", "-c16", f"-d{max(1, round(seconds))}s", "-H", "Connection: close",
              f"http://{pod_ip(SERVER)}:{SERVER_PORT}/", netns=client)
    errors = re.search(r"Socket errors: (.*)", out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if errors and re.search(r"timeout [1-9]", errors.group(1)):
        print(f"   (wrk reported {errors.group(1).strip()})")
    return rate


def bench_packets(ns: Namespaces, state: ClusterState, seconds: float, rounds: int) -> None:
    print(f"\n3. per packet: new connections/s, client pod -> nginx pod on one bridge ({rounds} x {seconds} s each)")
    node, server, client = ns.netns("node"), ns.netns("srv"), ns.netns("cli")
    run("ip", "-n", node, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", node, "link", "set", "br0", "up")
    run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", netns=node)
    for pod_ns, number in ((server, SERVER), (client, CLIENT)):
        inside, outside = f"eth{number}", f"v{number}"
        run("ip", "-n", node, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", pod_ns)
        run("ip", "-n", node, "link", "set", outside, "master", "br0", "up")
        run("ip", "-n", pod_ns, "addr", "add", f"{pod_ip(number)}/16", "dev", inside)
        run("ip", "-n", pod_ns, "link", "set", inside, "up")
    run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1", netns=client)
    workdir = tempfile.mkdtemp(prefix="tl-bench-nginx-")
    ns.dirs.append(workdir)
    conf = Path(workdir) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, ip=pod_ip(SERVER), port=SERVER_PORT))
    ns.procs.append(subprocess.Popen(["ip", "netns", "exec", server, "nginx", "-c", str(conf), "-p", workdir],
                                     start_new_session=True, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    nft = NftApplier(node)
    tulle = full_document(compile_ruleset(state, NODE))
    iptables = linear_iptables(state)
    rule_count = iptables.count("\n-A FORWARD")

    def none() -> None:
        nft.delete_table()
        run("iptables-legacy", "-F", "FORWARD", netns=node)

    def conntrack_only() -> None:
        none()
        nft.apply(CONNTRACK_ONLY)

    def with_tulle() -> None:
        none()
        nft.apply(tulle)

    def with_iptables() -> None:
        none()
        run("iptables-legacy-restore", netns=node, input=iptables)

    variants = {"no policy": none, "no policy, conntrack on": conntrack_only, "tulle, 10,000 policies": with_tulle,
                f"iptables, {rule_count} rules": with_iptables}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    wrk(client, 1)  # warm-up
    for _ in range(rounds):
        for name, setup in variants.items():
            setup()
            rates[name].append(wrk(client, seconds))
    none()
    base = statistics.median(rates["no policy"])
    tracked = statistics.median(rates["no policy, conntrack on"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"   {name:<28} {rate:>10.0f} conn/s   {rate / base:6.3f} x no policy   "
              f"{rate / tracked:6.3f} x conntrack on")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    with namespaces() as ns:
        state = bench_compile(ns, args.pods)
        bench_incremental(ns, state)
        bench_packets(ns, state, args.seconds, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
