"""Entry point of `tulle-control`: the control plane, with no flags needed locally.

    tulle-control                                   # SQLite under /var/lib/tulle
    tulle-control --listen-tls 0.0.0.0:15014        # reachable from other hosts, over mTLS
    tulle-control --store etcd://127.0.0.1:2379     # a replica sharing etcd with others
    tulle-control issue-cert --kind operator --name alice --out ~/.tulle

Who gets in (the model: `control.caller`; the rules: `control.api_authorization`,
`control.xds.client_authorization`, `control.ca.attestation`):
- `--socket` (default /run/tulle/control.sock, 0600 in a 0700 directory): the config
  API, the CA and xDS (ADS, CSDS) for root on this machine.
- `--listen-tls ADDR` (repeatable; 127.0.0.1:15014 unless `--listen` or `--listen-tls`
  is given; `--listen-tls ''` for none): the same services over mTLS. Clients present
  a certificate from this CA: an operator's may do everything, an agent's acts for its
  own node only, a sidecar's reads only its own pod's xDS config.
- `--listen ADDR`, `--xds-listen ADDR` (repeatable, off by default): plaintext, trusted
  as they are, each logged as a warning: for a private network such as a lab's underlay.
`issue-cert` mints operator and agent credentials with the CA of the state dir (or
`--ca-cert/--ca-key`), on this host: `control.ca.credentials`.
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

from control.ca.authority import CertificateAuthority
from control.ca.component import DEFAULT_TRUST_DOMAIN, CaConfig, CaService
from control.ca.credentials import DEFAULT_TTL as CREDENTIALS_TTL
from control.ca.credentials import CredentialKind, issue_credentials
from control.ca.spiffe import InvalidSpiffeId, SpiffeId
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


async def _serve(config: ControlPlaneConfig, xds_listen: tuple[str, ...], ca: CaConfig) -> None:
    authority = CaService(ca)
    xds = XdsService(xds_listen, trust_domain=ca.trust_domain)
    plane = ControlPlane(config, [authority, xds], credentials=authority.server_credentials)
    try:
        await plane.start()
    except BaseException:
        await plane.stop()
        raise
    # Tests and scripts read these lines to learn the ports actually bound.
    if xds.address:
        print(f"tulle-control xds: {xds.address}", file=sys.stderr, flush=True)
    if plane.tls_addresses:
        print(f"tulle-control mtls: {' '.join(plane.tls_addresses)}", file=sys.stderr, flush=True)
    print(f"tulle-control ready: {' '.join(plane.endpoints)}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await plane.stop()


_CA_OPTIONS = [
    click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR, show_default=True),
    click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True,
                 help="SPIFFE trust domain of the identities the CA issues"),
    click.option("--ca-cert", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
                 help="operator-supplied CA certificate (root or intermediate); default: a root under STATE_DIR/ca"),
    click.option("--ca-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
                 help="the key of --ca-cert (mode 0600)"),
    click.option("--ca-chain", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
                 help="PEM certificates above an intermediate --ca-cert, up to the root"),
]


def _ca_options(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_CA_OPTIONS):
        f = option(f)
    return f


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", default="", metavar="URL",
              help="sqlite:[PATH] (default: STATE_DIR/tulle.db) or etcd://HOST:PORT[/PREFIX][?max-txn-ops=N]")
@click.option("--listen-tls", multiple=True, metavar="ADDRESS",
              help=f"serve the config API, the CA and xDS over mTLS here (repeatable; port 0 picks one): clients "
                   f"need a certificate from this CA [default: {DEFAULT_LISTEN} unless --listen is given; '' for none]")
@click.option("--listen", multiple=True, metavar="ADDRESS",
              help="serve the config API and xDS in PLAINTEXT here (repeatable): whoever reaches it may change "
                   "the mesh; for a private network only (a lab's underlay); off by default")
@click.option("--socket", "socket_path", default=str(DEFAULT_SOCKET), show_default=True,
              help="root-only unix socket of the config API, CA and xDS ('' for none)")
@click.option("--service-cidr", default="10.96.0.0/16", show_default=True, help="Service cluster IPs")
@click.option("--cluster-cidr", default="10.244.0.0/16", show_default=True, help="pod CIDRs, cut per node")
@click.option("--node-cidr-prefix", default=24, show_default=True, help="prefix length of each node's pod CIDR")
@click.option("--xds-listen", multiple=True, metavar="ADDRESS",
              help="serve xDS (ADS and CSDS) in PLAINTEXT here, e.g. 127.0.0.1:15010 (port 0 picks one) or "
                   "unix:PATH (made 0600); repeatable; off by default (xDS is always on the socket and "
                   "--listen-tls ports)")
@click.option("--svid-ttl", default="24h", show_default=True, metavar="DURATION",
              help="lifetime of workload certificates (e.g. 24h, 90m, 20s)")
@_ca_options
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def command(store: str, listen_tls: tuple[str, ...], listen: tuple[str, ...], socket_path: str, service_cidr: str,
            cluster_cidr: str, node_cidr_prefix: int, xds_listen: tuple[str, ...], svid_ttl: str, state_dir: Path,
            trust_domain: str, ca_cert: Path | None, ca_key: Path | None, ca_chain: Path | None, log_level: str) -> None:
    """The Tulle control plane: config API, stores, derived state, xDS and CA.

    `tulle-control issue-cert --help`: operator and agent credentials for the mTLS ports.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cluster = ClusterConfig(service_cidr, cluster_cidr, node_cidr_prefix)
        cluster.service_ips, cluster.pod_cidrs  # noqa: B018 - validates both CIDRs now
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    ca = _ca_config(trust_domain, ca_cert, ca_key, ca_chain, svid_ttl)
    if not listen and not listen_tls:
        listen_tls = (DEFAULT_LISTEN,)
    config = ControlPlaneConfig(
        store=store, state_dir=state_dir, socket=Path(socket_path) if socket_path else None,
        listen=tuple(a for a in listen if a), listen_tls=tuple(a for a in listen_tls if a), cluster=cluster,
        trust_domain=trust_domain,
    )
    try:
        asyncio.run(_serve(config, tuple(a for a in xds_listen if a), ca))
    except (StoreError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _ca_config(trust_domain: str, ca_cert: Path | None, ca_key: Path | None, ca_chain: Path | None,
               svid_ttl: str = "24h") -> CaConfig:
    try:
        SpiffeId(trust_domain, "default", "default")  # validates the trust domain now
        return CaConfig(trust_domain, parse_duration(svid_ttl, "--svid-ttl"), ca_cert, ca_key, ca_chain)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("issue-cert", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--kind", type=click.Choice([k.value for k in CredentialKind]), required=True,
              help="operator: may use the config API and read every proxy's status; agent: acts for node NAME")
@click.option("--name", required=True, help="the operator's name, or the agent's node")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="directory to write cert.pem, key.pem (0600) and ca.pem to")
@click.option("--ttl", default=f"{int(CREDENTIALS_TTL.total_seconds()) // 3600}h", show_default=True,
              metavar="DURATION", help="lifetime of the certificate")
@_ca_options
def issue_cert(kind: str, name: str, out: Path, ttl: str, state_dir: Path, trust_domain: str,
               ca_cert: Path | None, ca_key: Path | None, ca_chain: Path | None) -> None:
    """Mint an operator's or a remote agent's credentials with this control plane's CA
    (give the same --state-dir, or --ca-cert/--ca-key, and --trust-domain as tulle-control)."""
    ca_config = _ca_config(trust_domain, ca_cert, ca_key, ca_chain)
    try:
        CredentialKind(kind).identity(trust_domain, name)
    except InvalidSpiffeId:
        raise click.BadParameter(f"{name!r} is not a DNS subdomain name (lowercase letters, digits, '-', '.')",
                                 param_hint="--name") from None
    try:
        lifetime = parse_duration(ttl, "--ttl")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ttl") from None
    now = dt.datetime.now(dt.UTC)
    try:
        if ca_config.cert is not None and ca_config.key is not None:
            ca = CertificateAuthority.from_files(ca_config.cert, ca_config.key, trust_domain, ca_config.chain)
        elif (state_dir / "ca" / "ca-cert.pem").exists():
            ca = CaService(ca_config).load(state_dir, now)
        else:
            raise click.ClickException(f"no CA under {state_dir / 'ca'}: start tulle-control with this "
                                       "--state-dir once, or give --ca-cert and --ca-key")
        written = issue_credentials(ca, CredentialKind(kind), name, out, now, lifetime)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{written.identity} until {written.not_after:%Y-%m-%d %H:%M:%S}Z: "
               f"{out / 'cert.pem'}, {out / 'key.pem'}, {out / 'ca.pem'}")


_DURATION = re.compile(r"^(\d+)(h|m|s)$")


def parse_duration(text: str, option: str) -> dt.timedelta:
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{option}: {text!r} is not a positive duration like 24h, 90m or 20s")
    return dt.timedelta(seconds=int(match[1]) * {"h": 3600, "m": 60, "s": 1}[match[2]])


def main() -> int:
    try:
        # `issue-cert` is a command of its own; everything else is the server's flags.
        if sys.argv[1:2] == ["issue-cert"]:
            code = issue_cert(args=sys.argv[2:], prog_name="tulle-control issue-cert", standalone_mode=False)
        else:
            code = command(args=sys.argv[1:], prog_name="tulle-control", standalone_mode=False)
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
