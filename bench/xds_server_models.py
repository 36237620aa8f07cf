"""grpc.aio versus grpcio's thread-pool server for long-lived ADS-like streams.

Why this exists: tulle-control's ADS server must hold 1,000+ mostly idle bidirectional
streams and push to all of them at once, on 2 cores. This runs the two concurrency
models grpcio offers side by side, each in its own process, with the same workload:

- N clients open one bidirectional stream each (over N/20 connections) and send one
  request, as a proxy's first DiscoveryRequest;
- the server then pushes one ~1 KB message to every stream (an endpoint change) and
  reads one reply from each (the ACK), three times;
measuring the push → all-replied time, the server's RSS and thread count with N streams
open, and its CPU seconds. The threaded server needs a pool thread per open stream (its
handler blocks for the stream's life) and one more to read each stream's requests.

Usage: python bench/xds_server_models.py [--clients 1000,2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

METHOD = "/bench.Push/Stream"
PAYLOAD = b"x" * 1024
OPTIONS = [("grpc.max_concurrent_streams", 1 << 20)]


def _identity(b: bytes) -> bytes:
    return b


# -- servers (each run in its own process) ----------------------------------------------


def serve_threads(clients: int) -> None:
    streams: list[queue.Queue[bytes | None]] = []
    replies = threading.Semaphore(0)
    lock = threading.Lock()

    def handler(requests: Any, context: Any) -> Any:
        outbox: queue.Queue[bytes | None] = queue.Queue()
        next(requests)  # the first request

        def read() -> None:
            try:
                for _ in requests:
                    replies.release()
            except grpc.RpcError:
                pass  # the stream ended

        threading.Thread(target=read, daemon=True).start()
        with lock:
            streams.append(outbox)
        while (item := outbox.get()) is not None:
            yield item

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=clients + 16), options=OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Push", {"Stream": grpc.stream_stream_rpc_method_handler(handler, _identity, _identity)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def push() -> None:
        for outbox in list(streams):
            outbox.put(PAYLOAD)

    _control_loop(port, lambda: len(streams), push,
                  lambda n: [replies.acquire() for _ in range(n)])
    server.stop(0)


def serve_aio(clients: int) -> None:
    async def main() -> None:
        streams: list[asyncio.Queue[bytes | None]] = []
        replied = asyncio.Queue[int]()

        async def handler(requests: Any, context: Any) -> Any:
            outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
            it = requests.__aiter__()
            await it.__anext__()

            async def read() -> None:
                async for _ in it:
                    replied.put_nowait(1)

            reader = asyncio.create_task(read())
            streams.append(outbox)
            try:
                while (item := await outbox.get()) is not None:
                    yield item
            finally:
                reader.cancel()

        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "bench.Push", {"Stream": grpc.stream_stream_rpc_method_handler(handler, _identity, _identity)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        loop = asyncio.get_running_loop()

        def push() -> None:
            for q in list(streams):
                loop.call_soon_threadsafe(q.put_nowait, PAYLOAD)

        def wait(n: int) -> None:
            async def take() -> None:
                for _ in range(n):
                    await replied.get()
            asyncio.run_coroutine_threadsafe(take(), loop).result()

        await loop.run_in_executor(None, _control_loop, port, lambda: len(streams), push, wait)
        await server.stop(0)

    asyncio.run(main())


def _control_loop(port: int, count: Any, push: Any, wait: Any) -> None:
    """stdin commands from the driver: `count`, `push N` (push, wait for N replies)."""
    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "count":
            print(json.dumps({"streams": count(), "threads": threading.active_count()}), flush=True)
        elif cmd[0] == "push":
            t0 = time.monotonic()
            push()
            wait(int(cmd[1]))
            print(json.dumps({"seconds": time.monotonic() - t0}), flush=True)
        else:
            break


# -- driver -------------------------------------------------------------------------------


async def clients_run(port: int, n: int, ready: asyncio.Event, stop: asyncio.Event) -> None:
    # A local subchannel pool gives each channel its own connection, as each proxy has.
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range((n + 19) // 20)]
    opened = 0

    async def one(i: int) -> None:
        nonlocal opened
        call = channels[i // 20].stream_stream(METHOD, _identity, _identity)()
        await call.write(b"hello")
        opened += 1
        if opened == n:
            ready.set()
        async for _ in call:
            await call.write(b"ack")

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        if i % 100 == 99:
            # grpcio's aio client fails a few calls when thousands open in one instant.
            await asyncio.sleep(0.05)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()


def _cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(model: str, n: int) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, __file__, "--serve", model, "--clients", str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin and server.stdout
    loop = asyncio.get_running_loop()

    async def ask(cmd: str) -> dict[str, Any]:
        server.stdin.write(cmd + "\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        return json.loads(await loop.run_in_executor(None, server.stdout.readline))  # type: ignore[union-attr]

    try:
        port = json.loads(server.stdout.readline())["port"]
        ready, stop = asyncio.Event(), asyncio.Event()
        cpu0 = _cpu(server.pid)
        task = asyncio.create_task(clients_run(port, n, ready, stop))
        t0 = time.monotonic()
        await asyncio.wait_for(ready.wait(), 120)
        while (await ask("count"))["streams"] < n:
            await asyncio.sleep(0.05)
        opened_s = time.monotonic() - t0
        counts = await ask("count")
        pushes = [(await ask(f"push {n}"))["seconds"] for _ in range(3)]
        result = {"model": model, "clients": n, "open_s": opened_s, "push_s": min(pushes), "push_max_s": max(pushes),
                  "rss_mib": _rss(server.pid), "threads": counts["threads"], "cpu_s": _cpu(server.pid) - cpu0}
        stop.set()
        await task
        return result
    finally:
        try:
            server.stdin.write("quit\n")
            server.stdin.flush()
            server.wait(timeout=15)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            server.kill()
            server.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1000,2000")
    p.add_argument("--serve", choices=["aio", "threads"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        n = int(args.clients)
        (serve_aio if args.serve == "aio" else serve_threads)(n)
        return 0
    print(f"{'clients':>7} {'model':>8} {'open s':>7} {'push→all ACK s':>15} {'max':>6} {'RSS MiB':>8} {'threads':>8} {'CPU s':>6}")
    for n in (int(c) for c in args.clients.split(",")):
        rows = [asyncio.run(measure(model, n)) for model in ("aio", "threads")]
        for r in rows:
            print(f"{r['clients']:>7} {r['model']:>8} {r['open_s']:>7.2f} {r['push_s']:>15.3f} {r['push_max_s']:>6.3f} "
                  f"{r['rss_mib']:>8.0f} {r['threads']:>8} {r['cpu_s']:>6.2f}")
        aio, threads = rows
        print(f"        threads/aio: push {threads['push_s'] / aio['push_s']:.2f}x, RSS {threads['rss_mib'] / aio['rss_mib']:.2f}x, "
              f"CPU {threads['cpu_s'] / aio['cpu_s']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
