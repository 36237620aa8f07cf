"""Entry point of `tulle-proxy`: Envoy's command line, Envoy's bootstrap.

    tulle-proxy -c BOOTSTRAP.yaml [--concurrency N] [--log-level LEVEL] [--base-id N]
                [--mode serve|validate] [--identity-socket PATH]

A bootstrap that cannot be honoured fails start-up with exit status 1 and one line naming
the field ("static_resources.clusters[0].lb_policy: ..."). `--mode validate` only checks.
SIGTERM and SIGINT stop the proxy; so does POST /quitquitquit on the admin listener.
`--identity-socket PATH` (not Envoy's): the proxy is its own identity agent, its key made
here and its certificate got from a CSR to the node agent (proxy/tls/identity_client.py).

`--concurrency N` (N > 1): the configuration is validated once, then N worker processes are
forked; each runs its own event loop and binds every listener with SO_REUSEPORT, so the
kernel spreads connections over them. Worker 0, the leader, serves the admin listener and
holds the only ADS stream; it passes every xDS update it applied to the other workers, runs
the only active health checks, outlier detectors (fed by every worker's outcomes) and DNS
resolutions, whose results every worker applies, passes on the server's health-check state
(/healthcheck/fail, /ok), and its /stats add up every worker's (proxy/worker_link.py). The
circuit breakers' counts are shared memory, made here before the fork
(proxy/upstream/shared_breaker.py). If a worker exits, the others are stopped and the proxy
exits with its status; SIGTERM to the parent stops every worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING

from proxy.bootstrap import BootstrapConfig, load_bootstrap
from proxy.config_error import ConfigError

if TYPE_CHECKING:
    from proxy.upstream.shared_breaker import BreakerCounters

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "warn": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tulle-proxy", description="Envoy-compatible sidecar proxy")
    parser.add_argument("-c", "--config-path", required=True, help="Envoy v3 bootstrap (YAML or JSON)")
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes (SO_REUSEPORT)")
    parser.add_argument("-l", "--log-level", default="info", choices=sorted(_LEVELS))
    parser.add_argument("--base-id", type=int, default=0, help="accepted for Envoy compatibility")
    parser.add_argument("--mode", choices=("serve", "validate"), default="serve")
    parser.add_argument("--service-cluster", default="")
    parser.add_argument("--service-node", default="")
    parser.add_argument("--disable-hot-restart", action="store_true")
    parser.add_argument("--identity-socket", default="", metavar="PATH",
                        help="the node agent's identity socket: generate the workload's key here and get the "
                             "secrets 'default' and 'ROOTCA' from a CSR, instead of over SDS")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=_LEVELS[args.log_level], stream=sys.stderr,
                        format="[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s")
    try:
        config = load_bootstrap(args.config_path)
    except ConfigError as error:
        print(f"tulle-proxy: invalid bootstrap {args.config_path}: {error}", file=sys.stderr)
        return 1
    if args.mode == "validate":
        print(f"configuration '{args.config_path}' OK")
        return 0
    if args.concurrency < 1:
        print("tulle-proxy: --concurrency must be >= 1", file=sys.stderr)
        return 1
    if args.concurrency == 1:
        return _run_worker(config, vars(args), reuse_port=False, admin=True)
    return _run_workers(config, vars(args), args.concurrency)


def _run_worker(config: BootstrapConfig, options: dict[str, object], reuse_port: bool,
                admin: bool, followers: list[socket.socket] | None = None,
                leader: socket.socket | None = None, breakers: BreakerCounters | None = None) -> int:
    import uvloop

    uvloop.install()
    return asyncio.run(_serve(config, options, reuse_port, admin, followers or [], leader, breakers))


def _run_workers(config: BootstrapConfig, options: dict[str, object], count: int) -> int:
    import gc
    import os

    gc.freeze()   # what is loaded so far stays shared with the workers (no collector writes to it)
    # one link per follower: [leader's end, follower's end]
    links = [socket.socketpair() for _ in range(count - 1)]
    from proxy.upstream.shared_breaker import BreakerCounters

    shared = BreakerCounters.allocate(count)   # the circuit breakers' counts, one segment for all
    children: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 1
            try:
                for position, (leader_end, follower_end) in enumerate(links):   # not ours
                    if index != 0:
                        leader_end.close()
                    if index != position + 1:
                        follower_end.close()
                breakers = BreakerCounters(shared, count, index)
                if index == 0:
                    ends = [leader_end for leader_end, _ in links]
                    code = _run_worker(config, options, reuse_port=True, admin=True, followers=ends,
                                       breakers=breakers)
                else:
                    code = _run_worker(config, options, reuse_port=True, admin=False,
                                       leader=links[index - 1][1], breakers=breakers)
            finally:
                os._exit(code)
        children.append(pid)
    for pair in links:
        for end in pair:
            end.close()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    remaining = set(children)
    while remaining:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if remaining and (code != 0 or status == 0):
            status = status or code
            forward(signal.SIGTERM, None)
    return status


async def _serve(config: BootstrapConfig, options: dict[str, object], reuse_port: bool = False,
                 admin: bool = True, followers: list[socket.socket] | None = None,
                 leader: socket.socket | None = None, breakers: BreakerCounters | None = None) -> int:
    from proxy.server import ProxyServer

    server = ProxyServer(config, reuse_port=reuse_port, admin=admin, followers=followers or (),
                         leader=leader, identity_socket=str(options.get("identity_socket") or ""),
                         breakers=breakers)
    server.admin_state.options = options
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stopped.set)
    try:
        await server.start()
    except ConfigError as error:
        print(f"tulle-proxy: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"tulle-proxy: cannot start: {error}", file=sys.stderr)
        return 1
    _settle_memory()
    await server.stopped.wait()
    await server.stop()
    return 0


def _settle_memory() -> None:
    """After start-up: what start-up built lives as long as the proxy, so the collector
    stops scanning it (gc.freeze: fewer objects per full collection on the request path),
    and the heap that parsing the bootstrap left free goes back to the kernel (~2 MiB RSS)."""
    import ctypes
    import gc

    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):   # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


if __name__ == "__main__":
    sys.exit(main())
