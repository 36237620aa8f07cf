"""The agent's cluster DNS answers (pure): A records for Service names, NODATA for other
types of a known name, NXDOMAIN for everything else, never forwarding."""

from __future__ import annotations

import ipaddress

from dnslib import QTYPE, RCODE, DNSRecord

from cni.lab.pod_dns import resolv_conf
from netpolicy.agent.dns import answer

NAMES = {"catalog.shop.svc.cluster.local.": ipaddress.IPv4Address("10.96.0.20")}


def resolve(name: str) -> ipaddress.IPv4Address | None:
    return NAMES.get(name)


def ask(name: str, qtype: str = "A") -> DNSRecord:
    response = answer(bytes(DNSRecord.question(name, qtype).pack()), resolve)
    assert response is not None
    return DNSRecord.parse(response)


def test_a_service_name_has_an_authoritative_a_record_of_its_cluster_ip() -> None:
    reply = ask("Catalog.shop.svc.cluster.local")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert [(str(rr.rdata), rr.rtype, rr.ttl) for rr in reply.rr] == [("10.96.0.20", QTYPE.A, 5)]


def test_another_type_of_a_known_name_is_an_empty_answer() -> None:
    reply = ask("catalog.shop.svc.cluster.local", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_unknown_and_outside_names_are_nxdomain() -> None:
    assert ask("nobody.shop.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
    assert ask("example.com").header.rcode == RCODE.NXDOMAIN


def test_garbage_is_dropped() -> None:
    assert answer(b"\x00\x01garbage", resolve) is None


def test_a_pods_resolv_conf_searches_its_namespace_first() -> None:
    text = resolv_conf("shop", ipaddress.IPv4Address("10.244.1.1"))
    assert text.splitlines() == ["search shop.svc.cluster.local svc.cluster.local cluster.local",
                                 "nameserver 10.244.1.1", "options ndots:5"]
