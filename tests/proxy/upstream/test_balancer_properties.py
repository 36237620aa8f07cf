"""Properties every balancer keeps, whatever the hosts, weights, priorities and health."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream.balancer import hash_key_for, make_balancer
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet

POLICIES = ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"]

host_specs = st.lists(
    st.tuples(
        st.integers(1, 5),  # weight
        st.integers(0, 2),  # priority
        st.booleans(),  # healthy
        st.integers(0, 3),  # active requests
    ),
    max_size=12,
)


def build(specs: list[tuple[int, int, bool, int]]) -> list[Host]:
    hosts = []
    for i, (weight, priority, healthy, active) in enumerate(specs):
        host = Host(f"10.9.0.{i}", 80, weight=weight, locality_priority=priority, active_requests=active)
        host.outlier_ejected = not healthy
        hosts.append(host)
    return hosts


@settings(max_examples=60)
@given(
    policy=st.sampled_from(POLICIES),
    specs=host_specs,
    threshold=st.sampled_from([0.0, 50.0]),
    later=host_specs,
)
def test_picks_are_always_routable_and_none_only_when_nothing_is(
    policy: str,
    specs: list[tuple[int, int, bool, int]],
    threshold: float,
    later: list[tuple[int, int, bool, int]],
) -> None:
    host_set = HostSet(build(specs), panic_threshold_percent=threshold)
    balancer = make_balancer(policy, host_set, None, random.Random(0))
    for change in (None, later):
        if change is not None:
            host_set.update(build(change))  # a membership change, then the same checks
        routable = set(host_set.routable())
        for i in range(30):
            host = balancer.choose(hash_key_for(str(i)))
            if routable:
                assert host in routable
            else:
                assert host is None
