"""tulle-agent's unix-socket server: reads one request per connection, runs it
on the agent's datapath thread, writes the answer (framing in `cni.wire`).

The socket file is created with mode 0600 (only root may attach pods) in a
directory created on demand; a stale socket left by a killed agent is replaced,
a live one is refused (two agents on one socket would race on the kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path

from cni.wire import MAX_MESSAGE
from netpolicy.agent.agent import NodeAgent
from netpolicy.agent.dns import DnsServer

log = logging.getLogger("tulle.agent")


class SocketInUse(RuntimeError):
    pass


def _claim_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # stale: nobody listens
    else:
        raise SocketInUse(f"another tulle-agent is serving {path}")
    finally:
        probe.close()


async def serve(agent: NodeAgent, ready: asyncio.Event | None = None) -> None:
    path = agent.config.socket_path
    _claim_socket_path(path)
    loop = asyncio.get_running_loop()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(MAX_MESSAGE + 1)
            while chunk := await reader.read(65536):
                data += chunk
                if len(data) > MAX_MESSAGE:
                    break
            if len(data) > MAX_MESSAGE:
                reply: object = {"error": f"request exceeds {MAX_MESSAGE} bytes"}
            else:
                try:
                    request = json.loads(data)
                    op = request["op"]
                except (ValueError, KeyError, TypeError):
                    reply = {"error": "request is not a JSON object with an 'op'"}
                else:
                    reply = await loop.run_in_executor(agent.worker, agent.run, op, request)
            writer.write(json.dumps(reply).encode())
            await writer.drain()
        except Exception:
            log.exception("agent request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_connection, path=str(path), backlog=256)
    finally:
        os.umask(old_umask)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: agent.worker.submit(agent.reload_nodes_file))
    dns = None
    if agent.config.dns_address is not None and agent.services is not None:
        dns = DnsServer(agent.config.dns_address, agent.config.dns_port, agent.services.resolve)
        await dns.start()
    log.info("tulle-agent for node %s serving %s", agent.config.node, path)
    if ready is not None:
        ready.set()
    try:
        async with server:
            await stop.wait()
    finally:
        if dns is not None:
            dns.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
