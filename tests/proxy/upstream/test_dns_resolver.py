"""The c-ares resolver's answers, as Envoy's c-ares resolver gives them: each address with its
TTL (the smaller of the record's and its CNAMEs'), no records as an empty answer, a server
error as a failure, and dns_lookup_family's order of queries. A DNS server of the test's own
on an ephemeral port of 127.0.0.1 is the cluster's resolver (ResolverConfig.resolvers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSRecord

from proxy.upstream.dns_resolver import CaresResolver, DnsAnswer, DnsFailure, ResolverConfig
from tests.proxy.dns_server import ThreadedDnsServer

RECORDS = {
    ("v4.example.test", "A"): [A("10.0.0.1"), A("10.0.0.2")],
    ("dual.example.test", "A"): [A("10.0.0.3")],
    ("dual.example.test", "AAAA"): [AAAA("fd00::3")],
    ("v6.example.test", "AAAA"): [AAAA("fd00::6")],
    ("target.example.test", "A"): [A("10.0.0.9")],
}
TTLS = {"v4.example.test": 7, "dual.example.test": 30, "v6.example.test": 40, "target.example.test": 9}


class Server(ThreadedDnsServer):
    """Answers RECORDS; `alias.example.test` is a CNAME (TTL 2) of target; `broken.example.test`
    gets SERVFAIL. Records the (name, type) and the source port of each query."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.source_ports: list[int] = []
        self.batch = 1   # replies are held until this many are due, then sent together
        self._held: list[tuple[DNSRecord, tuple[str, int]]] = []
        super().__init__()

    def send(self, reply: DNSRecord, peer: tuple[str, int]) -> None:
        self._held.append((reply, peer))
        if len(self._held) >= self.batch:
            for held, to in self._held:
                super().send(held, to)
            self._held.clear()

    def answer(self, query: DNSRecord, reply: DNSRecord, peer: tuple[str, int]) -> None:
        name, kind = str(query.q.qname).rstrip("."), QTYPE[query.q.qtype]
        self.asked.append((name, kind))
        self.source_ports.append(peer[1])
        if name == "broken.example.test":
            reply.header.rcode = RCODE.SERVFAIL
        elif name == "alias.example.test":
            reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME("target.example.test"), ttl=2))
            for rdata in RECORDS.get(("target.example.test", kind), []):
                reply.add_answer(RR("target.example.test", query.q.qtype, rdata=rdata, ttl=9))
        elif not any(known == name for known, _ in RECORDS):
            reply.header.rcode = RCODE.NXDOMAIN
        for rdata in RECORDS.get((name, kind), []):
            reply.add_answer(RR(name, query.q.qtype, rdata=rdata, ttl=TTLS[name]))


@pytest.fixture
def server() -> Iterator[Server]:
    dns = Server()
    yield dns
    dns.close()


def resolve(server: Server, name: str, family: str = "V4_ONLY") -> DnsAnswer:
    async def run() -> DnsAnswer:
        resolver = CaresResolver(ResolverConfig(resolvers=(f"127.0.0.1:{server.port}",), query_timeout=1.0,
                                                query_tries=1, no_default_search_domain=True))
        try:
            return await resolver.resolve(name, family)
        finally:
            resolver.close()
    return asyncio.run(run())


def test_every_address_comes_with_its_ttl_in_answer_order(server: Server) -> None:
    assert resolve(server, "v4.example.test") == DnsAnswer(("10.0.0.1", "10.0.0.2"), (7.0, 7.0))


def test_a_cnames_shorter_ttl_is_the_addresses_ttl(server: Server) -> None:
    assert resolve(server, "alias.example.test") == DnsAnswer(("10.0.0.9",), (2.0,))


def test_a_name_without_records_is_an_empty_answer(server: Server) -> None:
    assert resolve(server, "missing.example.test") == DnsAnswer()
    assert resolve(server, "v6.example.test", family="V4_ONLY") == DnsAnswer()   # NODATA


def test_a_server_failure_is_a_failure(server: Server) -> None:
    with pytest.raises(DnsFailure):
        resolve(server, "broken.example.test")


def test_auto_asks_aaaa_and_takes_only_it_when_it_has_addresses(server: Server) -> None:
    assert resolve(server, "dual.example.test", family="AUTO") == DnsAnswer(("fd00::3",), (30.0,))
    assert server.asked == [("dual.example.test", "AAAA")]


def test_auto_falls_back_to_a_when_aaaa_has_none(server: Server) -> None:
    assert resolve(server, "v4.example.test", family="AUTO").addresses == ("10.0.0.1", "10.0.0.2")
    assert server.asked == [("v4.example.test", "AAAA"), ("v4.example.test", "A")]


def test_v4_preferred_asks_a_first_then_aaaa(server: Server) -> None:
    assert resolve(server, "dual.example.test", family="V4_PREFERRED").addresses == ("10.0.0.3",)
    assert resolve(server, "v6.example.test", family="V4_PREFERRED").addresses == ("fd00::6",)


def test_v6_only_asks_aaaa_alone(server: Server) -> None:
    assert resolve(server, "dual.example.test", family="V6_ONLY").addresses == ("fd00::3",)
    assert server.asked == [("dual.example.test", "AAAA")]


def test_all_takes_both_families_ipv4_first(server: Server) -> None:
    assert resolve(server, "dual.example.test", family="ALL") == DnsAnswer(("10.0.0.3", "fd00::3"), (30.0, 30.0))


def test_an_ip_address_resolves_to_itself_with_no_ttl(server: Server) -> None:
    assert resolve(server, "10.1.2.3") == DnsAnswer(("10.1.2.3",), (0.0,))
    assert server.asked == []


NAMES = [f"n{number}.example.test" for number in range(6)]   # (distinct: c-ares caches answers)


def ports_of_lookups_together(server: Server, udp_max_queries: int) -> list[int]:
    """The source ports of NAMES' queries, all in flight at once on one resolver: the server
    answers none before it has them all. (c-ares closes a socket with nothing in flight, so
    lookups one after another each get a new port anyway.)"""
    server.batch = len(NAMES)
    async def run() -> None:
        resolver = CaresResolver(ResolverConfig(resolvers=(f"127.0.0.1:{server.port}",), query_timeout=1.0,
                                                query_tries=1, no_default_search_domain=True,
                                                udp_max_queries=udp_max_queries))
        try:
            lookups = [asyncio.ensure_future(resolver.resolve(name, "V4_ONLY")) for name in NAMES]
            for lookup in lookups:
                assert await lookup == DnsAnswer()
        finally:
            resolver.close()
    asyncio.run(run())
    return [server.source_ports[server.asked.index((name, "A"))] for name in NAMES]


def test_udp_max_queries_moves_to_a_new_source_port_after_that_many_lookups(server: Server) -> None:
    ports = ports_of_lookups_together(server, udp_max_queries=2)
    assert ports[0] == ports[1] != ports[2] == ports[3] != ports[4] == ports[5]
    assert len(set(ports)) == 3


def test_without_udp_max_queries_lookups_in_flight_share_their_port(server: Server) -> None:
    assert len(set(ports_of_lookups_together(server, udp_max_queries=0))) == 1
