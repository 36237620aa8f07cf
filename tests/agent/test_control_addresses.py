"""Where a joined tulle-agent finds xDS: the same address over the unix socket or mTLS
(one port serves the config API, xDS and the CA), else a lab's plaintext 15010."""

from __future__ import annotations

from pathlib import Path

from netpolicy.agent.control_link import ControlAddresses, ControlTls

TLS = ControlTls(Path("cert.pem"), Path("key.pem"), Path("ca.pem"))


def test_over_the_unix_socket_xds_is_the_same_socket() -> None:
    assert ControlAddresses.parse("unix:/run/tulle/control.sock", None).xds == "unix:/run/tulle/control.sock"


def test_over_mtls_xds_is_the_same_port() -> None:
    assert ControlAddresses.parse("10.0.0.1:15014", None, TLS).xds == "10.0.0.1:15014"


def test_over_plaintext_xds_is_the_control_hosts_port_15010() -> None:
    assert ControlAddresses.parse("172.30.0.254:15014", None).xds == "172.30.0.254:15010"


def test_an_explicit_xds_address_wins() -> None:
    assert ControlAddresses.parse("10.0.0.1:15014", "10.0.0.1:15012", TLS).xds == "10.0.0.1:15012"
