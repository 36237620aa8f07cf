"""Run inside a test's network namespace (`python -m tests.proxy.dns_probe KIND`), whose
/etc/netns resolv.conf names 127.0.0.1: a counting DNS server there, two upstreams that the
name can resolve to, and KIND (envoy or tulle-proxy) with --concurrency 2 over a STRICT_DNS
cluster. Prints one JSON line of what it saw: DNS queries per refresh interval, and which
upstream (and how many workers) served requests before and after the answer changed."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import yaml
from dnslib import QTYPE, RR, A, DNSRecord

from tests.ports import free_port
from tests.proxy.dns_server import ThreadedDnsServer
from tests.proxy.running import exchange, hcm_bootstrap
from tests.proxy.test_workers_health import ProbedUpstream
from tests.proxy_process import ProxyProcess

NAME = "backend.test"
REFRESH = 0.5      # the cluster's dns_refresh_rate
WINDOW = 3.0       # seconds over which queries are counted
REQUESTS = 30      # per round, each on its own connection: SO_REUSEPORT spreads them


class CountingDns(ThreadedDnsServer):
    """A UDP DNS server on 127.0.0.1:53 (the namespace's own): NAME's A record is `address`;
    counts the queries for NAME."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.queries = 0
        super().__init__(("127.0.0.1", 53))

    def answer(self, query: DNSRecord, reply: DNSRecord, peer: tuple[str, int]) -> None:
        if str(query.q.qname).rstrip(".") == NAME:
            self.queries += 1
            if query.q.qtype == QTYPE.A:
                reply.add_answer(RR(NAME, QTYPE.A, rdata=A(self.address), ttl=0))


def cluster(port: int) -> str:
    return f"""  - name: web
    type: STRICT_DNS
    connect_timeout: 1s
    dns_refresh_rate: {REFRESH}s
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: web
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {NAME}, port_value: {port}}}}}}}}}]}}]"""


def served(port: int, upstreams: list[ProbedUpstream]) -> dict[str, Any]:
    """A round of requests: the statuses, and per upstream the requests and the workers (its
    distinct connections) that sent them."""
    for upstream in upstreams:
        upstream.request_connections.clear()
    before = [upstream.requests for upstream in upstreams]
    statuses = sorted({exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").split(b" ", 2)[1]
                       .decode() for _ in range(REQUESTS)})
    return {"statuses": statuses,
            "requests": [upstream.requests - count for upstream, count in zip(upstreams, before, strict=True)],
            "workers": [len(upstream.request_connections) for upstream in upstreams]}


def main(kind: str) -> None:
    first = ProbedUpstream()
    port = first.port
    second = ProbedUpstream(address=("127.0.0.2", port))
    dns = CountingDns("127.0.0.1")
    listener = free_port()
    config = hcm_bootstrap(listener, "              - {match: {prefix: /}, route: {cluster: web}}", cluster(port),
                           admin_port=free_port())
    proxy = ProxyProcess(kind, yaml.safe_load(config), prefix=f"workerdns-{kind}-",  # type: ignore[arg-type]
                         until_live=True, concurrency=2)
    try:
        time.sleep(REFRESH)   # past start-up: steady refreshes only
        start, began = dns.queries, time.monotonic()
        time.sleep(WINDOW)
        per_refresh = (dns.queries - start) / ((time.monotonic() - began) / REFRESH)
        before = served(listener, [first, second])
        dns.address = "127.0.0.2"
        time.sleep(3 * REFRESH)   # a few refreshes: every worker has the new address
        after = served(listener, [first, second])
        print(json.dumps({"queries_per_refresh": per_refresh, "before": before, "after": after}))
    finally:
        proxy.close()
        dns.close()
        first.close()
        second.close()


if __name__ == "__main__":
    main(sys.argv[1])
