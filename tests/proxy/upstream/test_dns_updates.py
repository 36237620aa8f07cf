"""A DNS cluster's update_* stats count resolutions as Envoy 1.40's strict and logical DNS
clusters do (proxy/upstream/dns_updates.py)."""

from __future__ import annotations

from proxy.upstream.dns_updates import DnsUpdates


def counts(updates: DnsUpdates) -> tuple[int, int, int, int]:
    return updates.attempt, updates.success, updates.failure, updates.no_rebuild


def test_a_strict_first_answer_rebuilds_and_the_same_answer_again_does_not() -> None:
    updates = DnsUpdates(logical=False)
    for _ in range(3):
        updates.attempted()
    assert updates.answered("a.test", ["10.0.0.1", "10.0.0.2"])
    assert not updates.answered("a.test", ["10.0.0.1", "10.0.0.2"])
    assert not updates.answered("a.test", ["10.0.0.1", "10.0.0.2"])
    assert counts(updates) == (3, 3, 0, 2)


def test_a_strict_answer_in_another_order_rebuilds_nothing() -> None:
    updates = DnsUpdates(logical=False)
    updates.answered("a.test", ["10.0.0.1", "10.0.0.2"])
    assert not updates.answered("a.test", ["10.0.0.2", "10.0.0.1"])
    assert updates.no_rebuild == 1


def test_a_strict_empty_answer_is_a_success_and_a_first_one_rebuilds_nothing() -> None:
    updates = DnsUpdates(logical=False)
    assert not updates.answered("a.test", [])
    assert updates.answered("a.test", ["10.0.0.1"])
    assert updates.answered("a.test", [])
    assert (updates.success, updates.failure, updates.no_rebuild) == (3, 0, 1)


def test_a_changed_address_rebuilds() -> None:
    for logical in (False, True):
        updates = DnsUpdates(logical=logical)
        updates.answered("a.test", ["10.0.0.1"])
        assert updates.answered("a.test", ["10.0.0.2"])
        assert updates.no_rebuild == 0


def test_a_logical_cluster_rebuilds_when_any_address_of_the_list_changes() -> None:
    updates = DnsUpdates(logical=True)
    assert updates.answered("a.test", ["10.0.0.1", "10.0.0.2"])
    assert not updates.answered("a.test", ["10.0.0.1", "10.0.0.2"])
    assert updates.answered("a.test", ["10.0.0.1", "10.0.0.3"])
    assert updates.answered("a.test", ["10.0.0.3", "10.0.0.1"])   # the order too
    assert updates.no_rebuild == 1


def test_a_failure_is_counted_and_keeps_the_previous_answer() -> None:
    updates = DnsUpdates(logical=False)
    updates.attempted()
    updates.answered("a.test", ["10.0.0.1"])
    updates.attempted()
    updates.failed()
    updates.attempted()
    assert not updates.answered("a.test", ["10.0.0.1"])
    assert counts(updates) == (3, 2, 1, 1)


def test_names_are_compared_each_with_its_own_previous_answer() -> None:
    updates = DnsUpdates(logical=False)
    assert updates.answered("a.test", ["10.0.0.1"])
    assert updates.answered("b.test", ["10.0.0.1"])
    assert not updates.answered("a.test", ["10.0.0.1"])


def test_a_name_of_several_endpoints_counts_once_per_endpoint() -> None:
    updates = DnsUpdates(logical=False)
    updates.attempted(2)
    updates.answered("a.test", ["10.0.0.1"], 2)
    updates.attempted(2)
    updates.answered("a.test", ["10.0.0.1"], 2)
    updates.attempted(2)
    updates.failed(2)
    assert counts(updates) == (6, 4, 2, 2)


def test_every_update_stat_is_shown_with_envoys_eds_only_ones_at_zero() -> None:
    updates = DnsUpdates(logical=False)
    updates.attempted()
    updates.answered("a.test", ["10.0.0.1"])
    assert updates.as_dict() == {
        "update_attempt": 1, "update_success": 1, "update_failure": 0, "update_no_rebuild": 0,
        "update_empty": 0, "assignment_stale": 0, "assignment_timeout_received": 0,
        "assignment_use_cached": 0, "version": 0, "warming_state": 0}
