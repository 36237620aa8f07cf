"""Helpers to build hosts for the upstream tests."""

from __future__ import annotations

from proxy.upstream.host import Host


def make_hosts(n: int, weights: list[int] | None = None, base_port: int = 8000) -> list[Host]:
    weights = weights or [1] * n
    return [Host("127.0.0.1", base_port + i, weight=weights[i]) for i in range(n)]
