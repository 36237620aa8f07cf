"""The worker link's frames and the stats the leader adds up."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from proxy.admin.endpoints import HostRow, merge_hosts
from proxy.bootstrap import parse_bootstrap
from proxy.server import ProxyServer
from proxy.stats import ClusterStats, StatsStore
from proxy.tls.secrets import CertificateSecret, Secret, SecretStore, TrustBundle
from proxy.worker_link import (
    SECRETS,
    ForwardedSecrets,
    ForwardingSecretStore,
    FrameReader,
    decode_secrets_frame,
    encode_frame,
    encode_secrets,
    encode_stats,
)
from tests.proxy.running import bootstrap


@given(st.lists(st.tuples(st.sampled_from([b"x", b"s"]), st.binary(max_size=300)), max_size=8),
       st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(
        frames: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(kind, payload) for kind, payload in frames)
    reader = FrameReader()
    out: list[tuple[bytes, bytes]] = []
    position = 0
    for size in cuts * (len(stream) // max(sum(cuts), 1) + 1):
        out.extend(reader.feed(stream[position:position + size]))
        position += size
        if position >= len(stream):
            break
    out.extend(reader.feed(stream[position:]))
    assert out == frames


def test_the_leaders_stats_add_up_every_workers() -> None:
    store = StatsStore()
    web = ClusterStats(upstream_rq_total=3, upstream_cx_active=1)
    store.register("cluster", "web", web)
    store.followers[0] = [(*row[:5], 5, row[6])
                          for row in store.own_values()]
    store.followers[1] = [("cluster.only_there.upstream_rq_total", "cluster", "only_there",
                           "envoy_cluster_name", "upstream_rq_total", 2, False)]
    values = {row[0]: row[5] for row in store.values()}
    assert values["cluster.web.upstream_rq_total"] == 8
    assert values["cluster.web.upstream_cx_active"] == 6
    assert values["cluster.only_there.upstream_rq_total"] == 2
    assert {row[0]: row[5] for row in store.own_values()}["cluster.web.upstream_rq_total"] == 3


def test_the_gauges_every_worker_holds_alike_are_the_leaders_not_a_sum() -> None:
    store = StatsStore()
    store.register("cluster", "web", ClusterStats(membership_total=3, membership_healthy=2))
    store.followers[0] = list(store.own_values())
    values = {row[0]: row[5] for row in store.values()}
    assert values["cluster.web.membership_total"] == 3
    assert values["cluster.web.membership_healthy"] == 2


class RecordingLink:
    """Stands in for a LinkProtocol: keeps the frames sent."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, bytes]] = []

    def send(self, frame: bytes) -> None:
        self.frames.extend(FrameReader().feed(frame))


def test_secrets_cross_the_link_unchanged() -> None:
    secrets: dict[str, Secret] = {"default": CertificateSecret(b"CHAIN", b"KEY"), "ROOTCA": TrustBundle(b"CA")}
    [(kind, payload)] = FrameReader().feed(encode_secrets(secrets))
    assert kind == SECRETS
    assert decode_secrets_frame(payload) == secrets


def test_a_follower_gets_the_leaders_secrets_so_far_then_each_update_whole() -> None:
    leader = ForwardingSecretStore()
    leader.update({"ROOTCA": TrustBundle(b"CA-1")})
    link = RecordingLink()
    leader.link(link)  # type: ignore[arg-type]
    rotation: dict[str, Secret] = {"default": CertificateSecret(b"CHAIN-2", b"KEY-2"), "ROOTCA": TrustBundle(b"CA-2")}
    leader.update(rotation)
    follower = ForwardedSecrets(SecretStore())
    follower.apply(link.frames[0][1])
    assert follower.store.get("ROOTCA") == TrustBundle(b"CA-1")
    version = follower.store.version
    follower.apply(link.frames[1][1])
    assert follower.store.version == version + 1   # one swap for the whole rotation
    assert {name: follower.store.get(name) for name in follower.store.names()} == rotation


def test_clusters_adds_every_workers_host_counters() -> None:
    own: list[HostRow] = [("web", "10.0.0.1:80", {"rq_total": 3, "cx_active": 1, "health_flags": "healthy"})]
    follower: list[HostRow] = [("web", "10.0.0.1:80", {"rq_total": 4, "cx_active": 1, "health_flags": "healthy"}),
                ("web", "10.0.0.2:80", {"rq_total": 2, "cx_active": 0, "health_flags": "healthy"})]
    merged = merge_hosts(own, [follower])
    assert merged["web"]["10.0.0.1:80"]["rq_total"] == 7
    assert merged["web"]["10.0.0.1:80"]["cx_active"] == 2
    assert merged["web"]["10.0.0.2:80"]["rq_total"] == 2   # a host only the follower has


def test_a_follower_takes_its_secrets_from_the_leader_even_under_identity_socket() -> None:
    """One key and one CSR per proxy: only the leader runs the identity client."""
    from proxy.bootstrap import parse_bootstrap
    from proxy.server import ProxyServer
    from tests.proxy.running import bootstrap

    leader_end, follower_end = socket.socketpair()
    with leader_end, follower_end:
        follower = ProxyServer(parse_bootstrap(bootstrap(10000, 8080)), leader=follower_end,
                               identity_socket="/run/agent/identity.sock")
        leader = ProxyServer(parse_bootstrap(bootstrap(10000, 8080)), followers=[leader_end],
                             identity_socket="/run/agent/identity.sock")
    assert follower.identity is None and follower.forwarded_secrets is not None
    assert leader.identity is not None and isinstance(leader.secrets, ForwardingSecretStore)


def test_the_leaders_checker_counts_a_followers_requests_as_traffic_on_the_cluster() -> None:
    """Envoy probes at `interval` once the cluster has seen traffic on any worker, at
    `no_traffic_interval` before; the leader learns the followers' from their stats."""
    config = parse_bootstrap(bootstrap(10000, 8080))
    leader_end, follower_end = socket.socketpair()
    with leader_end, follower_end:
        server = ProxyServer(config, followers=[leader_end])
        cluster = server._add_cluster(config.clusters[0])
        assert not cluster.traffic_elsewhere()
        follower = StatsStore()
        follower.register("cluster", "a", ClusterStats(upstream_rq_total=0))
        [(kind, payload)] = FrameReader().feed(encode_stats(list(follower.own_values())))
        server._from_follower(0, kind, payload)
        assert not cluster.traffic_elsewhere()
        follower.register("cluster", "a", ClusterStats(upstream_rq_total=1))
        [(kind, payload)] = FrameReader().feed(encode_stats(list(follower.own_values())))
        server._from_follower(0, kind, payload)
        assert cluster.traffic_elsewhere()
