import random
from collections import Counter

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config_error import ConfigError
from proxy.upstream.balancer.hashing import hash_key_for
from proxy.upstream.balancer.ring_hash import RingHashBalancer, RingHashConfig, build_ring
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts

KEYS = [hash_key_for(f"key-{i}") for i in range(2000)]


def test_equal_hosts_get_equal_entries_and_the_lightest_a_whole_number() -> None:
    hashes, owners = build_ring(tuple(make_hosts(3)), RingHashConfig())
    assert len(hashes) == 1026  # ceil(1024 / 3) = 342 entries each
    assert set(Counter(owners).values()) == {342}
    assert hashes == sorted(hashes)


def test_entries_scale_with_weight() -> None:
    hosts = make_hosts(2, weights=[1, 3])
    _, owners = build_ring(tuple(hosts), RingHashConfig())
    assert Counter(owners) == {hosts[0]: 256, hosts[1]: 768}


def test_lightest_host_gets_whole_entries_so_the_ring_can_exceed_the_minimum() -> None:
    hosts = make_hosts(2, weights=[1, 1000])
    hashes, owners = build_ring(tuple(hosts), RingHashConfig())
    assert len(hashes) == 2002  # ceil(1024 / 1001) = 2 entries for the lightest host
    assert Counter(owners)[hosts[0]] == 2


def test_maximum_ring_size_caps_the_ring() -> None:
    hosts = make_hosts(2, weights=[1, 1000])
    hashes, _ = build_ring(tuple(hosts), RingHashConfig(minimum_ring_size=4096, maximum_ring_size=4096))
    assert len(hashes) == 4096


def test_same_key_same_host() -> None:
    balancer = RingHashBalancer(HostSet(make_hosts(5)), random.Random(0))
    assert all(balancer.choose(k) is balancer.choose(k) for k in KEYS[:100])


def test_keys_spread_evenly_over_equal_hosts() -> None:
    hosts = make_hosts(4)
    balancer = RingHashBalancer(HostSet(hosts), random.Random(0))
    counts = Counter(balancer.choose(k) for k in KEYS)
    for host in hosts:
        assert 300 < counts[host] < 700  # 500 each on a perfect ring; 256 entries each here


def test_a_key_picks_the_first_entry_at_or_after_it_wrapping_around() -> None:
    hosts = tuple(make_hosts(3))
    hashes, owners = build_ring(hosts, RingHashConfig())
    balancer = RingHashBalancer(HostSet(list(hosts)), random.Random(0))
    assert balancer.choose(hashes[10]) is owners[10]
    assert balancer.choose(hashes[10] + 1) is owners[11]
    assert balancer.choose(hashes[-1] + 1) is owners[0]


def test_attempts_walk_along_the_ring() -> None:
    hosts = tuple(make_hosts(3))
    hashes, owners = build_ring(hosts, RingHashConfig())
    balancer = RingHashBalancer(HostSet(list(hosts)), random.Random(0))
    assert balancer.choose(hashes[5], attempt=2) is owners[7]


def test_no_key_picks_at_random() -> None:
    hosts = make_hosts(4)
    balancer = RingHashBalancer(HostSet(hosts), random.Random(3))
    assert len({balancer.choose() for _ in range(100)}) == 4


def test_unhealthy_hosts_leave_the_ring() -> None:
    hosts = make_hosts(4)
    hosts[0].outlier_ejected = True
    balancer = RingHashBalancer(HostSet(hosts), random.Random(0))
    assert hosts[0] not in {balancer.choose(k) for k in KEYS}


def test_empty_ring_chooses_none() -> None:
    assert RingHashBalancer(HostSet([]), random.Random(0)).choose(1) is None


@settings(max_examples=25)
@given(n=st.integers(min_value=2, max_value=16), subnet=st.integers(0, 255), which=st.integers(0, 15))
def test_removing_a_host_moves_its_keys_and_few_others(n: int, subnet: int, which: int) -> None:
    hosts = [Host(f"10.1.{subnet}.{i}", 8080) for i in range(n)]
    host_set = HostSet(hosts)
    balancer = RingHashBalancer(host_set, random.Random(0))
    host_set.subscribe(balancer.hosts_changed)
    before = [balancer.choose(k) for k in KEYS]
    gone = hosts[which % n]
    host_set.update([h for h in hosts if h is not gone])
    after = [balancer.choose(k) for k in KEYS]
    assert all(a is not gone for a in after)
    # Others' keys move only because each survivor gets ceil(1024/(n-1)) instead of
    # ceil(1024/n) entries; Envoy's ring behaves the same.
    others_moved = sum(1 for b, a in zip(before, after, strict=True) if b is not gone and a is not b)
    assert others_moved / len(KEYS) < 0.15


def test_from_proto_reads_sizes() -> None:
    message = Cluster.RingHashLbConfig()
    message.minimum_ring_size.value = 2048
    message.maximum_ring_size.value = 4096
    assert RingHashConfig.from_proto(message) == RingHashConfig(2048, 4096)


def test_from_proto_rejects_murmur() -> None:
    message = Cluster.RingHashLbConfig(hash_function=Cluster.RingHashLbConfig.MURMUR_HASH_2)
    with pytest.raises(ConfigError, match=r"ring_hash_lb_config\.hash_function"):
        RingHashConfig.from_proto(message)


def test_from_proto_rejects_minimum_above_maximum() -> None:
    message = Cluster.RingHashLbConfig()
    message.minimum_ring_size.value = 5000
    message.maximum_ring_size.value = 4096
    with pytest.raises(ConfigError, match=r"ring_hash_lb_config\.minimum_ring_size"):
        RingHashConfig.from_proto(message)


def test_key_sticks_to_one_priority_level() -> None:
    p0, p1 = make_hosts(4), make_hosts(4, base_port=9000)
    for host in p1:
        host.locality_priority = 1
    for host in p0[:2]:
        host.outlier_ejected = True  # 50% healthy: P0 70%, P1 30%
    balancer = RingHashBalancer(HostSet(p0 + p1), random.Random(0))
    picks = {k: balancer.choose(k) for k in KEYS}
    assert all(balancer.choose(k) is host for k, host in picks.items())
    to_p1 = sum(1 for h in picks.values() if h is not None and h.locality_priority == 1)
    assert abs(to_p1 - 600) < 100
