"""Run inside a test's network namespace (`python -m tests.proxy.dns_ttl_probe KIND`), whose
/etc/netns resolv.conf names 127.0.0.1: a DNS server there answering for two names, two
upstreams they can resolve to, and KIND (envoy or tulle-proxy, --concurrency 2) with a
STRICT_DNS and a LOGICAL_DNS cluster, both `respect_dns_ttl` with a `dns_refresh_rate`
(REFRESH) longer than the records' TTL. Prints one JSON line of what it saw, per cluster:
- the intervals between its DNS resolutions while the TTL is 1 s, then 0, then while the
  server answers SERVFAIL;
- how long after the answer changed its requests went to the new address;
- where requests went after the failures (the hosts are kept);
- each cluster's update_* stats at the end, and what the DNS server's log says they should
  be after it answered with no record for a while (Envoy's counting:
  proxy/upstream/dns_updates.py): an attempt per resolution (a burst of A queries), a
  success per answer (STRICT_DNS: an empty one too), a failure per SERVFAIL (LOGICAL_DNS:
  per empty answer too), a rebuild per answer whose addresses differ from the previous one.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
import urllib.request
from typing import Any

import yaml
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from tests.ports import free_port
from tests.proxy.dns_server import ThreadedDnsServer
from tests.proxy.running import exchange, hcm_bootstrap
from tests.proxy.test_workers_health import ProbedUpstream
from tests.proxy_process import ProxyProcess

NAMES = {"strict": ("strict.test", "STRICT_DNS"), "logical": ("logical.test", "LOGICAL_DNS")}
REFRESH = 2.0      # dns_refresh_rate: twice the TTL, so the cadences tell them apart
TTL = 1
WINDOW = 4.5       # seconds over which each phase's resolutions are recorded
SETTLE = 2.5       # after a change of the answers, before recording: past one old interval
BURST = 0.2        # queries closer than this belong to one resolution (c-ares retries)


class TtlDns(ThreadedDnsServer):
    """A UDP DNS server on 127.0.0.1:53: every name of NAMES has the A record `address` with
    `ttl`, or SERVFAIL while `failing`, or no record while `empty`; the time of every A query
    is recorded per name, and what it was answered (an address, None: SERVFAIL, "": none)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ttl = TTL
        self.failing = False
        self.empty = False
        self.queries: dict[str, list[float]] = {name: [] for name, _ in NAMES.values()}
        self.answers: dict[str, list[str | None]] = {name: [] for name, _ in NAMES.values()}
        super().__init__(("127.0.0.1", 53))

    def answer(self, query: DNSRecord, reply: DNSRecord, peer: tuple[str, int]) -> None:
        name = str(query.q.qname).rstrip(".")
        if name in self.queries and query.q.qtype == QTYPE.A:
            self.queries[name].append(time.monotonic())
            if self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                self.answers[name].append(None)
            elif self.empty:
                self.answers[name].append("")
            else:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(self.address), ttl=self.ttl))
                self.answers[name].append(self.address)

    def resolutions(self, name: str, since: float, until: float) -> list[float]:
        """The start of each resolution of `name` in [since, until)."""
        starts: list[float] = []
        for at in self.queries[name]:
            if since <= at < until and (not starts or at - starts[-1] > BURST):
                starts.append(at)
        return starts

    def expected_updates(self, name: str, kind: str) -> dict[str, int]:
        """The update_* stats the resolutions of `name` so far make for a `kind` cluster (each
        resolution's outcome is the last answer of its queries: Envoy's c-ares asks again after
        a SERVFAIL). An empty answer is a success for STRICT_DNS (and a first one rebuilds
        nothing), a failure for LOGICAL_DNS."""
        replied = self.answers[name][:]   # (a query is recorded before its answer)
        queries = self.queries[name][:len(replied)]
        answers: list[str | None] = []
        for index, (at, answer) in enumerate(zip(queries, replied, strict=True)):
            if index and at - queries[index - 1] <= BURST:
                answers[-1] = answer
            else:
                answers.append(answer)
        if kind == "LOGICAL_DNS":
            answers = [address or None for address in answers]
        answered = [address for address in answers if address is not None]
        rebuilds = sum(1 for index, address in enumerate(answered) if address != (answered[index - 1] if index else ""))
        return {"update_attempt": len(answers), "update_success": len(answered),
                "update_failure": len(answers) - len(answered), "update_no_rebuild": len(answered) - rebuilds,
                "update_empty": 0}


UPDATE_STATS = ("update_attempt", "update_success", "update_failure", "update_no_rebuild", "update_empty")
QUIET = 0.4   # seconds without a query of a name before its stats are read (its answer is in)


def update_stats(admin: int, dns: TtlDns) -> dict[str, dict[str, dict[str, int]]]:
    """Per cluster: its update_* stats, and those its DNS traffic makes, read together (between
    two resolutions of its name)."""
    seen: dict[str, dict[str, dict[str, int]]] = {}
    deadline = time.monotonic() + 3 * REFRESH
    while len(seen) < len(NAMES) and time.monotonic() < deadline:
        for cluster, (name, kind) in NAMES.items():
            queries = len(dns.queries[name])
            if cluster in seen or not queries or time.monotonic() - dns.queries[name][-1] < QUIET:
                continue
            expected = dns.expected_updates(name, kind)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as reply:
                lines = dict(line.split(": ", 1) for line in reply.read().decode().splitlines() if ": " in line)
            if len(dns.queries[name]) == queries:   # no resolution began meanwhile
                seen[cluster] = {"stats": {stat: int(lines[f"cluster.{cluster}.{stat}"]) for stat in UPDATE_STATS},
                                 "dns": expected}
        time.sleep(0.05)
    return seen


def clusters(port: int) -> str:
    return "\n".join(f"""  - name: {cluster}
    type: {kind}
    connect_timeout: 1s
    dns_refresh_rate: {REFRESH}s
    respect_dns_ttl: true
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: {cluster}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {name}, port_value: {port}}}}}}}}}]}}]"""
                     for cluster, (name, kind) in NAMES.items())


def served_by(port: int, cluster: str, upstreams: list[ProbedUpstream]) -> int | None:
    """Which upstream (index) served one request to `cluster`; None: none did."""
    before = [upstream.requests for upstream in upstreams]
    response = exchange(port, f"GET /{cluster} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    if not response.startswith(b"HTTP/1.1 200"):
        return None
    for index, (upstream, count) in enumerate(zip(upstreams, before, strict=True)):
        if upstream.requests > count:
            return index
    return None


def intervals(starts: list[float]) -> float | None:
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    return round(statistics.median(gaps), 2) if gaps else None


def record(dns: TtlDns) -> dict[str, float | None]:
    began = time.monotonic()
    time.sleep(WINDOW)
    return {cluster: intervals(dns.resolutions(name, began, time.monotonic())) for cluster, (name, _) in NAMES.items()}


def hosts_main(kind: str) -> None:
    """The namespace's /etc/hosts (the test's) names both NAMES as 127.0.0.2, the DNS server
    says 127.0.0.1: which upstream each cluster sends to, and how many A queries reached DNS."""
    first = ProbedUpstream()
    port = first.port
    second = ProbedUpstream(address=("127.0.0.2", port))
    dns = TtlDns("127.0.0.1")
    listener = free_port()
    routes = "\n".join(f"              - {{match: {{prefix: /{cluster}}}, route: {{cluster: {cluster}}}}}"
                       for cluster in NAMES)
    config = hcm_bootstrap(listener, routes, clusters(port), admin_port=free_port())
    proxy = ProxyProcess(kind, yaml.safe_load(config), prefix=f"dnshosts-{kind}-",  # type: ignore[arg-type]
                         until_live=True, concurrency=2)
    try:
        time.sleep(REFRESH + 0.5)   # past a refresh: hosts-file answers have no TTL
        print(json.dumps({"served_by": {cluster: served_by(listener, cluster, [first, second]) for cluster in NAMES},
                          "dns_queries": sum(len(times) for times in dns.queries.values())}))
    finally:
        proxy.close()
        dns.close()
        first.close()
        second.close()


def main(kind: str) -> None:
    first = ProbedUpstream()
    port = first.port
    second = ProbedUpstream(address=("127.0.0.2", port))
    upstreams = [first, second]
    dns = TtlDns("127.0.0.1")
    listener = free_port()
    routes = "\n".join(f"              - {{match: {{prefix: /{cluster}}}, route: {{cluster: {cluster}}}}}"
                       for cluster in NAMES)
    admin = free_port()
    config = hcm_bootstrap(listener, routes, clusters(port), admin_port=admin)
    proxy = ProxyProcess(kind, yaml.safe_load(config), prefix=f"dnsttl-{kind}-",  # type: ignore[arg-type]
                         until_live=True, concurrency=2)
    try:
        observed: dict[str, Any] = {"before": {cluster: served_by(listener, cluster, upstreams) for cluster in NAMES}}
        observed["ttl_1"] = record(dns)
        dns.address = "127.0.0.2"
        changed = time.monotonic()
        pickup: dict[str, float | None] = dict.fromkeys(NAMES)
        while None in pickup.values() and time.monotonic() - changed < 3 * REFRESH:
            for cluster in NAMES:
                if pickup[cluster] is None and served_by(listener, cluster, upstreams) == 1:
                    pickup[cluster] = round(time.monotonic() - changed, 2)
            time.sleep(0.05)
        observed["pickup"] = pickup
        dns.ttl = 0
        time.sleep(SETTLE)
        observed["ttl_0"] = record(dns)
        dns.failing = True
        time.sleep(SETTLE)
        observed["servfail"] = record(dns)
        observed["after_failures"] = {cluster: served_by(listener, cluster, upstreams) for cluster in NAMES}
        dns.failing, dns.empty = False, True
        # one empty answer each: tulle-proxy's c-ares caches an empty answer (pycares cannot
        # set its qcache_max_ttl) where Envoy's asks again, so a second one would reach the
        # server from Envoy only (the stats count it alike)
        deadline = time.monotonic() + 3 * REFRESH
        while time.monotonic() < deadline and not all("" in dns.answers[name] for name, _ in NAMES.values()):
            time.sleep(0.05)
        observed["updates"] = update_stats(admin, dns)
        print(json.dumps(observed))
    finally:
        proxy.close()
        dns.close()
        first.close()
        second.close()


if __name__ == "__main__":
    (hosts_main if sys.argv[2:] == ["hosts"] else main)(sys.argv[1])
