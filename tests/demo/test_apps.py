"""The demo apps' reading of x-forwarded-client-cert, the header that tells the catalog
which identities its sidecar verified."""

from __future__ import annotations

from control.meshctl.demo.apps import client_cert_fields


def test_by_hash_and_uri_are_read_from_envoys_format() -> None:
    header = ("By=spiffe://cluster.local/ns/shop/sa/catalog;Hash=7f96;"
              "URI=spiffe://cluster.local/ns/shop/sa/frontend")
    assert client_cert_fields(header) == {"By": "spiffe://cluster.local/ns/shop/sa/catalog", "Hash": "7f96",
                                          "URI": "spiffe://cluster.local/ns/shop/sa/frontend"}


def test_only_the_first_element_counts_and_quotes_are_dropped() -> None:
    header = 'By="spiffe://td/ns/a/sa/b";URI=spiffe://td/ns/c/sa/d,By=spiffe://other;URI=spiffe://x'
    assert client_cert_fields(header) == {"By": "spiffe://td/ns/a/sa/b", "URI": "spiffe://td/ns/c/sa/d"}


def test_no_header_means_no_identities() -> None:
    assert client_cert_fields("") == {}
