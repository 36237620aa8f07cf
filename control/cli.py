"""Entry point of `tulle-control`: the control plane, with no flags needed locally.

    tulle-control                                   # SQLite under /var/lib/tulle
    tulle-control --store etcd://127.0.0.1:2379     # a replica sharing etcd with others
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import signal
import sys
from pathlib import Path

import click
import grpc

from control.ca.component import DEFAULT_TRUST_DOMAIN, CaConfig, CaService
from control.ca.serving import ServingIdentity
from control.ca.spiffe import SpiffeId
from control.plane import (
    DEFAULT_LISTEN,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    ControlPlane,
    ControlPlaneConfig,
)
from control.registry import ClusterConfig
from control.store import StoreError
from control.xds.service import XdsService


async def _serve(config: ControlPlaneConfig, xds_listen: str, xds_listen_tls: str, ca: CaConfig) -> None:
    authority = CaService(ca)

    def credentials() -> grpc.ServerCredentials:
        assert authority.ca is not None
        return ServingIdentity(authority.ca).server_credentials()

    xds = None
    if xds_listen or xds_listen_tls:
        xds = XdsService(xds_listen, trust_domain=ca.trust_domain, tls_listen=xds_listen_tls, credentials=credentials)
    plane = ControlPlane(config, [authority, *([xds] if xds else [])])
    if xds is not None and xds_listen_tls:
        # Agents on other machines get their pods' certificates over the mTLS port.
        xds.ads.services.append(lambda server: authority.serve_for_remote_agents(server, plane))
    try:
        await plane.start()
    except BaseException:
        await plane.stop()
        raise
    if xds is not None and xds.address:
        print(f"tulle-control xds: {xds.address}", file=sys.stderr, flush=True)
    if xds is not None and xds.tls_address:
        print(f"tulle-control xds-tls: {xds.tls_address}", file=sys.stderr, flush=True)
    # Tests and scripts read this line to learn the ports actually bound.
    print(f"tulle-control ready: {' '.join(plane.endpoints)}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await plane.stop()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", default="", metavar="URL",
              help="sqlite:[PATH] (default: STATE_DIR/tulle.db) or etcd://HOST:PORT[/PREFIX][?max-txn-ops=N]")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--listen", multiple=True, default=[DEFAULT_LISTEN], show_default=True,
              help="TCP address of the config API (repeatable; port 0 picks one)")
@click.option("--socket", "socket_path", default=str(DEFAULT_SOCKET), show_default=True,
              help="unix socket of the config API ('' for none)")
@click.option("--service-cidr", default="10.96.0.0/16", show_default=True, help="Service cluster IPs")
@click.option("--cluster-cidr", default="10.244.0.0/16", show_default=True, help="pod CIDRs, cut per node")
@click.option("--node-cidr-prefix", default=24, show_default=True, help="prefix length of each node's pod CIDR")
@click.option("--xds-listen", default="", metavar="ADDRESS",
              help="serve xDS (ADS and CSDS) here, e.g. 127.0.0.1:15010 (port 0 picks one); off by default")
@click.option("--xds-listen-tls", default="", metavar="ADDRESS",
              help="serve xDS over mTLS here (Istio's 15012; port 0 picks one): clients need a certificate "
                   "from this CA and read only their own node's config; off by default")
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True,
              help="SPIFFE trust domain of the identities the CA issues")
@click.option("--svid-ttl", default="24h", show_default=True, metavar="DURATION",
              help="lifetime of workload certificates (e.g. 24h, 90m, 20s)")
@click.option("--ca-cert", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="operator-supplied CA certificate (root or intermediate); default: a root under STATE_DIR/ca")
@click.option("--ca-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="the key of --ca-cert (mode 0600)")
@click.option("--ca-chain", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="PEM certificates above an intermediate --ca-cert, up to the root")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def command(store: str, state_dir: Path, listen: tuple[str, ...], socket_path: str, service_cidr: str,
            cluster_cidr: str, node_cidr_prefix: int, xds_listen: str, xds_listen_tls: str, trust_domain: str, svid_ttl: str,
            ca_cert: Path | None, ca_key: Path | None, ca_chain: Path | None, log_level: str) -> None:
    """The Tulle control plane: config API, stores, derived state."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cluster = ClusterConfig(service_cidr, cluster_cidr, node_cidr_prefix)
        cluster.service_ips, cluster.pod_cidrs  # noqa: B018 - validates both CIDRs now
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    try:
        ca = CaConfig(trust_domain, parse_duration(svid_ttl, "--svid-ttl"), ca_cert, ca_key, ca_chain)
        SpiffeId(trust_domain, "default", "default")  # validates the trust domain now
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    config = ControlPlaneConfig(
        store=store, state_dir=state_dir, socket=Path(socket_path) if socket_path else None,
        listen=listen, cluster=cluster,
    )
    try:
        asyncio.run(_serve(config, xds_listen, xds_listen_tls, ca))
    except (StoreError, OSError) as e:
        raise click.ClickException(str(e)) from None


_DURATION = re.compile(r"^(\d+)(h|m|s)$")


def parse_duration(text: str, option: str) -> dt.timedelta:
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{option}: {text!r} is not a positive duration like 24h, 90m or 20s")
    return dt.timedelta(seconds=int(match[1]) * {"h": 3600, "m": 60, "s": 1}[match[2]])


def main() -> int:
    try:
        code = command(standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Abort:
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
