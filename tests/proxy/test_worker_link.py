"""The worker link's frames and the stats the leader adds up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.stats import ClusterStats, StatsStore
from proxy.worker_link import FrameReader, encode_frame


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
