"""The policy seam of ADD: the applier runs before ADD returns, and an applier
that fails makes the ADD fail with nothing left behind. The backend is driven
in-process on a thread that lives in the node namespace, as the agent drives it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute

from cni.backend import CniBackend, PodAttachment
from cni.errors import CniError, ErrorCode
from cni.ipam_store import AllocationStore
from cni.netns import join_netns
from cni.request import parse_request
from tests.kernel import KernelResources, ip

pytestmark = pytest.mark.privileged

T = TypeVar("T")


class RecordingPolicy:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[tuple[str, str, bool]] = []

    def pod_attached(self, pod: PodAttachment) -> None:
        # The pod's interface exists by the time policy is programmed.
        self.events.append(("attached", str(pod.address), "eth0" in ip("link", netns=Path(pod.netns).name)))
        if self.fail:
            raise CniError(ErrorCode.DATAPATH_FAILURE, f"failed to program policy for {pod.address}")

    def pod_detached(self, pod: PodAttachment) -> None:
        self.events.append(("detached", str(pod.address), True))


class NodeThread:
    """A thread inside the node namespace, holding the backend."""

    def __init__(self, netns: str, state: Path, policy: RecordingPolicy) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.backend: CniBackend = self.run(lambda: self._start(netns, state, policy))

    def _start(self, netns: str, state: Path, policy: RecordingPolicy) -> CniBackend:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        join_netns(fd)
        os.close(fd)
        return CniBackend(AllocationStore(state / "a.db"), IPRoute(groups=0), policy=policy)

    def run(self, fn: Callable[[], T]) -> T:
        return self.pool.submit(fn).result()

    def cni(self, command: str, netns: str) -> Any:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0"}
        conf = {"cniVersion": "1.1.0", "name": "tnet", "type": "tulle-cni", "ipam": {"subnet": "10.77.0.0/24"}}
        return self.run(lambda: self.backend.handle(parse_request(env, conf)))


@pytest.fixture
def node_ns(kernel: KernelResources) -> str:
    return kernel.netns("node")


@pytest.fixture
def make_node(node_ns: str, tmp_path: Path) -> Iterator[Callable[[RecordingPolicy], NodeThread]]:
    threads: list[NodeThread] = []

    def make(policy: RecordingPolicy) -> NodeThread:
        threads.append(NodeThread(node_ns, tmp_path, policy))
        return threads[-1]

    yield make
    for thread in threads:
        thread.pool.shutdown()


def test_policy_is_programmed_before_add_returns(make_node: Callable[[RecordingPolicy], NodeThread], kernel: KernelResources) -> None:
    policy = RecordingPolicy()
    node = make_node(policy)
    pod = kernel.netns("pod")
    node.cni("ADD", pod)
    assert policy.events == [("attached", "10.77.0.2", True)]
    node.cni("DEL", pod)
    assert policy.events[-1] == ("detached", "10.77.0.2", True)


def test_a_failing_policy_fails_the_add_and_leaves_nothing(
    make_node: Callable[[RecordingPolicy], NodeThread], kernel: KernelResources, node_ns: str
) -> None:
    policy = RecordingPolicy(fail=True)
    node = make_node(policy)
    pod = kernel.netns("pod")
    with pytest.raises(CniError, match="failed to program policy"):
        node.cni("ADD", pod)
    assert node.run(node.backend.store.all) == []
    assert "tlv" not in ip("link", netns=node_ns)
    assert "eth0" not in ip("link", netns=pod)
