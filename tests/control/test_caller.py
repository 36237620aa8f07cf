"""Who is calling tulle-control, by channel and certificate (control.caller)."""

from __future__ import annotations

from control.caller import Caller, Role

TD = "cluster.local"


def classify(peer: str = "ipv4:10.0.0.2:40000", tls: bool = True, spiffe_id: str = "") -> Caller:
    return Caller.classify(peer, tls, spiffe_id, TD)


def test_a_unix_socket_peer_is_local_and_trusted() -> None:
    caller = classify("unix:/run/tulle/control.sock", tls=False)
    assert caller.role is Role.LOCAL and caller.trusted


def test_a_tcp_peer_without_tls_is_insecure_and_trusted_as_such() -> None:
    caller = classify(tls=False)
    assert caller.role is Role.INSECURE and caller.trusted


def test_an_operator_certificate_names_the_operator() -> None:
    caller = classify(spiffe_id=f"spiffe://{TD}/ns/tulle-system/sa/tulle-operator.alice")
    assert (caller.role, caller.name, caller.trusted) == (Role.OPERATOR, "alice", False)


def test_an_agent_certificate_names_its_node() -> None:
    caller = classify(spiffe_id=f"spiffe://{TD}/ns/tulle-system/sa/tulle-agent.node-1")
    assert (caller.role, caller.name) == (Role.AGENT, "node-1")


def test_the_control_planes_own_certificate_is_a_replica() -> None:
    assert classify(spiffe_id=f"spiffe://{TD}/ns/tulle-system/sa/tulle-control").role is Role.CONTROL_PLANE


def test_a_workload_certificate_is_a_workload() -> None:
    caller = classify(spiffe_id=f"spiffe://{TD}/ns/shop/sa/frontend")
    assert caller.role is Role.WORKLOAD and caller.identity is not None and caller.identity.namespace == "shop"


def test_other_trust_domains_unknown_system_accounts_and_no_spiffe_id_are_strangers() -> None:
    for spiffe_id in ("spiffe://other.td/ns/tulle-system/sa/tulle-operator.alice",
                      f"spiffe://{TD}/ns/tulle-system/sa/tulle-agent.",
                      f"spiffe://{TD}/ns/tulle-system/sa/default",
                      ""):
        assert classify(spiffe_id=spiffe_id).role is Role.STRANGER, spiffe_id
