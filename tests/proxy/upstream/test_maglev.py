import random
from collections import Counter

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config_error import ConfigError
from proxy.upstream.balancer.hashing import (
    MASK64,
    combine_hash_keys,
    hash_key_for,
)
from proxy.upstream.balancer.maglev import (
    MaglevBalancer,
    MaglevConfig,
    build_table,
)
from proxy.upstream.host import Host
from proxy.upstream.host_set import HostSet
from tests.proxy.upstream.hosts import make_hosts

KEYS = [hash_key_for(f"key-{i}") for i in range(2000)]


def test_table_is_full_and_shared_equally() -> None:
    hosts = make_hosts(3)
    counts = Counter(build_table(tuple(hosts), 65537))
    assert sum(counts.values()) == 65537
    assert max(counts.values()) - min(counts.values()) <= 1


def test_table_shares_follow_weights() -> None:
    hosts = make_hosts(3, weights=[1, 2, 5])
    counts = Counter(build_table(tuple(hosts), 65537))
    for host in hosts:
        assert counts[host] / 65537 == pytest.approx(host.weight / 8, abs=0.001)


def test_table_does_not_depend_on_host_order() -> None:
    hosts = make_hosts(5)
    assert build_table(tuple(hosts), 251) == build_table(tuple(reversed(hosts)), 251)


def test_key_modulo_table_size_picks_the_slot() -> None:
    hosts = make_hosts(4)
    table = build_table(tuple(hosts), 65537)
    balancer = MaglevBalancer(HostSet(hosts), random.Random(0))
    assert balancer.choose(123456789) is table[123456789 % 65537]


def test_attempt_mutates_the_key() -> None:
    hosts = make_hosts(4)
    table = build_table(tuple(hosts), 65537)
    balancer = MaglevBalancer(HostSet(hosts), random.Random(0))
    key = 987654321
    assert balancer.choose(key, attempt=1) is table[(key ^ MASK64) % 65537]


def test_no_key_picks_at_random() -> None:
    hosts = make_hosts(3)
    balancer = MaglevBalancer(HostSet(hosts), random.Random(1))
    assert len({balancer.choose() for _ in range(60)}) == 3


def test_empty_table_chooses_none() -> None:
    assert MaglevBalancer(HostSet([]), random.Random(0)).choose(5) is None


def test_flapping_host_reuses_cached_tables() -> None:
    hosts = make_hosts(3)
    host_set = HostSet(hosts)
    balancer = MaglevBalancer(host_set, random.Random(0))
    host_set.subscribe(balancer.hosts_changed)
    all_up = balancer._tables[0]
    hosts[0].outlier_ejected = True
    host_set.health_changed()
    one_down = balancer._tables[0]
    assert one_down is not all_up
    for _ in range(3):
        hosts[0].outlier_ejected = False
        host_set.health_changed()
        assert balancer._tables[0] is all_up
        hosts[0].outlier_ejected = True
        host_set.health_changed()
        assert balancer._tables[0] is one_down


@settings(max_examples=25)
@given(n=st.integers(min_value=2, max_value=16), subnet=st.integers(0, 255), which=st.integers(0, 15))
def test_removing_a_host_moves_little_more_than_its_keys(n: int, subnet: int, which: int) -> None:
    hosts = [Host(f"10.2.{subnet}.{i}", 8080) for i in range(n)]
    host_set = HostSet(hosts)
    balancer = MaglevBalancer(host_set, random.Random(0), MaglevConfig(table_size=65537))
    host_set.subscribe(balancer.hosts_changed)
    before = [balancer.choose(k) for k in KEYS]
    gone = hosts[which % n]
    host_set.update([h for h in hosts if h is not gone])
    after = [balancer.choose(k) for k in KEYS]
    others_moved = sum(1 for b, a in zip(before, after, strict=True) if b is not gone and a is not b)
    assert others_moved / len(KEYS) < 0.03


def test_combine_hash_keys_rotates_the_previous_key() -> None:
    assert combine_hash_keys(None, 7) == 7
    assert combine_hash_keys(1 << 63, 0) == 1
    assert combine_hash_keys(5, 5) != 0  # identical policies do not cancel


def test_from_proto_reads_table_size() -> None:
    message = Cluster.MaglevLbConfig()
    message.table_size.value = 251
    assert MaglevConfig.from_proto(message).table_size == 251


def test_from_proto_rejects_non_prime_table_size() -> None:
    message = Cluster.MaglevLbConfig()
    message.table_size.value = 1000
    with pytest.raises(ConfigError, match=r"maglev_lb_config\.table_size"):
        MaglevConfig.from_proto(message)
