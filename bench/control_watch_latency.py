"""Apply → watch-event latency of tulle-control, on SQLite and on etcd, against bare etcd.

What is measured: a client applies one object through the config API (gRPC, as meshctl
does) and a second connection's Watch stream receives its event; latency is the time
from sending the apply to receiving the event. Applies are sequential (the next one
starts when the previous event arrived), 1,000 per store by default.

The peer, measured in the same run with the same gRPC stack: bare etcd, a Put through
etcd's KV API and the event through etcd's Watch API. Tulle on etcd adds validation,
the registry's read-modify-write and its own gRPC hop on top of exactly that, so the
ratio is Tulle's overhead. Machines here are shared and noisy: read the ratios.

    .venv/bin/python bench/control_watch_latency.py [--count 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from control.meshctl.client import ConfigClient
from proto.etcd.etcdserverpb import rpc_pb2, rpc_pb2_grpc

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.05)


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def etcd(workdir: Path) -> Iterator[str]:
    client, peer = free_port(), free_port()
    name = f"bench-{client}"
    process = subprocess.Popen(
        ["/usr/bin/etcd", "--name", name, "--data-dir", str(workdir / name),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"{name}=http://127.0.0.1:{peer}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: can_connect(client), "etcd")
        yield f"127.0.0.1:{client}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def tulle_control(state_dir: Path, *extra: str) -> Iterator[str]:
    state_dir.mkdir(parents=True)
    log = state_dir / "log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(BIN / "tulle-control"), "--state-dir", str(state_dir), "--socket", "", "--listen", "127.0.0.1:0",
             "--log-level", "warning", *extra], stdout=subprocess.DEVNULL, stderr=sink,
        )
    try:
        wait_for(lambda: "ready:" in log.read_text(), "tulle-control")
        line = next(line for line in log.read_text().splitlines() if "ready:" in line)
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(10)


def measure_tulle(address: str, count: int) -> list[float]:
    writer, watcher = ConfigClient(address), ConfigClient(address)
    _, revision = watcher.list("Namespace")
    arrived: queue.Queue[tuple[str, float]] = queue.Queue()

    def follow() -> None:
        for _, obj, _ in watcher.watch(["Namespace"], revision=revision):
            arrived.put((obj["metadata"]["name"], time.perf_counter()))

    threading.Thread(target=follow, daemon=True).start()
    latencies = []
    for i in range(count):
        name = f"bench-{i}"
        sent = time.perf_counter()
        writer.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
        got, at = arrived.get(timeout=10)
        assert got == name
        latencies.append(at - sent)
    writer.close()
    watcher.close()
    return latencies


def measure_etcd(endpoint: str, count: int) -> list[float]:
    channel = grpc.insecure_channel(endpoint)
    kv, watch = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.WatchStub(channel)
    prefix = b"/bench/"
    requests: queue.Queue[rpc_pb2.WatchRequest] = queue.Queue()
    requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=prefix, range_end=b"/bench0")))
    arrived: queue.Queue[tuple[bytes, float]] = queue.Queue()
    created = threading.Event()

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # the channel closes at the end
            for response in watch.Watch(iter(requests.get, None)):
                if response.created:
                    created.set()
                for event in response.events:
                    arrived.put((event.kv.key, time.perf_counter()))

    threading.Thread(target=follow, daemon=True).start()
    created.wait(10)
    latencies = []
    for i in range(count):
        key = prefix + f"ns-{i}".encode()
        value = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{i}"}}).encode()
        sent = time.perf_counter()
        kv.Txn(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))]))
        got, at = arrived.get(timeout=10)
        assert got == key
        latencies.append(at - sent)
    channel.close()
    return latencies


def summary(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    count = parser.parse_args().count
    workdir = Path(tempfile.mkdtemp(prefix="tulle-bench-control-"))
    try:
        with etcd(workdir) as endpoint:
            results = {"bare etcd (peer)": summary(measure_etcd(endpoint, count))}
            with tulle_control(workdir / "sqlite") as address:
                results["tulle-control, SQLite"] = summary(measure_tulle(address, count))
            with tulle_control(workdir / "etcd", "--store", f"etcd://{endpoint}/tulle-bench") as address:
                results["tulle-control, etcd"] = summary(measure_tulle(address, count))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    peer_p50, peer_p99 = results["bare etcd (peer)"]
    print(f"apply -> watch event, {count} sequential applies")
    print(f"{'':24} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10} {'p99 ratio':>10}")
    for name, (p50, p99) in results.items():
        print(f"{name:24} {p50:8.2f} {p99:8.2f} {p50 / peer_p50:9.1f}x {p99 / peer_p99:9.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
