"""Entry point of `tulle-proxy`: Envoy's command line, Envoy's bootstrap.

    tulle-proxy -c BOOTSTRAP.yaml [--concurrency N] [--log-level LEVEL] [--base-id N]
                [--mode serve|validate]

A bootstrap that cannot be honoured fails start-up with exit status 1 and one line naming
the field ("static_resources.clusters[0].lb_policy: ..."). `--mode validate` only checks.
SIGTERM and SIGINT stop the proxy; so does POST /quitquitquit on the admin listener.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from proxy.bootstrap import BootstrapConfig, load_bootstrap
from proxy.config_error import ConfigError

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
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        pass
    return asyncio.run(_serve(config, vars(args)))


async def _serve(config: BootstrapConfig, options: dict[str, object]) -> int:
    from proxy.server import ProxyServer

    server = ProxyServer(config)
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
    await server.stopped.wait()
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
