"""DNS clusters under --concurrency: the leader resolves, every follower takes its answers."""

from __future__ import annotations

import asyncio
import random

from proxy.upstream.cluster import Cluster
from proxy.upstream.dns_workers import FollowerResolutions, LeaderResolutions, Resolution, Resolved
from proxy.worker_link import RESOLUTION, FrameReader, decode_resolution, encode_resolution
from tests.proxy.upstream.test_logical_dns import Resolver, config


def test_the_leader_sends_each_resolution_of_the_current_cluster_of_a_name() -> None:
    sent: list[Resolution] = []
    leader = LeaderResolutions(sent.append)
    old, new = object(), object()
    leader.start("web", old, lambda resolved: None)
    leader.start("web", new, lambda resolved: None)   # CDS replaced it: the old one refreshes until it stops
    leader.resolved("web", old, {"backend.test": ["10.0.0.1"]})
    leader.resolved("web", new, {"backend.test": ["10.0.0.2"]})
    leader.stopped("web", old)
    assert sent == [Resolution("web", {"backend.test": ["10.0.0.2"]})]
    leader.stopped("web", new)
    assert sent[-1] == Resolution("web", removed=True)


def test_a_follower_takes_a_kept_resolution_at_start_then_each_new_one() -> None:
    follower = FollowerResolutions()
    follower.apply(Resolution("web", {"backend.test": ["10.0.0.1"]}))   # before the cluster came
    taken: list[Resolved] = []
    follower.start("web", object(), taken.append)
    follower.apply(Resolution("web", {"backend.test": ["10.0.0.2"]}))
    assert taken == [{"backend.test": ["10.0.0.1"]}, {"backend.test": ["10.0.0.2"]}]


def test_a_stopped_followers_cluster_takes_nothing_more_and_a_removed_name_is_forgotten() -> None:
    follower = FollowerResolutions()
    owner = object()
    taken: list[Resolved] = []
    follower.start("web", owner, taken.append)
    follower.stopped("web", owner)
    follower.apply(Resolution("web", {"backend.test": ["10.0.0.1"]}))
    follower.apply(Resolution("web", removed=True))
    assert taken == []
    assert "web" not in follower.kept


def test_a_resolution_crosses_the_link_unchanged() -> None:
    report = Resolution("web", {"backend.test": ["10.0.0.1", "fd00::1"], "other.test": []})
    [(kind, payload)] = FrameReader().feed(encode_resolution(report))
    assert kind == RESOLUTION
    assert decode_resolution(payload) == report


def test_a_followers_dns_cluster_never_resolves_and_serves_the_leaders_addresses() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        follower = FollowerResolutions()
        cluster = Cluster(config(("backend.test",), {"type": "STRICT_DNS"}), random.Random(0), dns=follower)
        resolver = Resolver("10.9.9.9")
        cluster.dns_resolver = resolver
        starting = loop.create_task(cluster.start())
        await asyncio.sleep(0.01)
        assert not starting.done()   # warming: waits for the leader's first resolution
        follower.apply(Resolution("c", {"backend.test": ["10.0.0.1", "10.0.0.2"]}))
        await asyncio.wait_for(starting, 1)
        await cluster.stop()
        assert resolver.asked == []   # a follower never asks DNS
        return [host.key for host in cluster.host_set.hosts]

    assert asyncio.run(scenario()) == ["10.0.0.1:80", "10.0.0.2:80"]
