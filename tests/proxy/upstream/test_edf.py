from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.balancer.edf import EdfScheduler


def weight(entry: tuple[str, int]) -> float:
    return float(entry[1])


def test_picks_are_proportional_to_weights() -> None:
    entries = [("a", 1), ("b", 2), ("c", 3)]
    scheduler = EdfScheduler(entries, weight)
    counts = Counter(scheduler.pick() for _ in range(600))
    assert counts == {("a", 1): 100, ("b", 2): 200, ("c", 3): 300}


def test_picks_interleave_smoothly() -> None:
    scheduler = EdfScheduler([("a", 1), ("b", 3)], weight)
    picks = [scheduler.pick() for _ in range(8)]
    assert [p[0] for p in picks if p] == ["b", "b", "a", "b", "b", "b", "a", "b"]


def test_equal_deadlines_pick_in_insertion_order() -> None:
    scheduler = EdfScheduler([("a", 1), ("b", 1)], weight)
    assert [p[0] for p in (scheduler.pick(), scheduler.pick()) if p] == ["a", "b"]


def test_empty_scheduler_picks_nothing() -> None:
    assert EdfScheduler([], weight).pick() is None


@given(
    weights=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8),
    picks=st.integers(min_value=0, max_value=500),
)
def test_emulated_start_equals_picking_from_empty(weights: list[int], picks: int) -> None:
    entries = [(f"h{i}", w) for i, w in enumerate(weights)]
    walked = EdfScheduler(entries, weight)
    for _ in range(picks):
        walked.pick()
    emulated = EdfScheduler(entries, weight, picks=picks)
    # Over a whole period each entry is picked as often, give or take one pick that
    # a tie at the period's edge may move (Envoy notes the same of its emulation).
    period = sum(weights)
    walked_counts = Counter(walked.pick() for _ in range(period))
    emulated_counts = Counter(emulated.pick() for _ in range(period))
    for entry in entries:
        assert abs(walked_counts[entry] - emulated_counts[entry]) <= 1
