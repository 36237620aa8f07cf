"""Entry point of `tulle-agent --node NAME ...`, the per-node agent.

Run it inside the node's network namespace: every link, route and sysctl it
touches belongs to the namespace it runs in.

    tulle-agent --node node-1 --pod-cidr 10.244.1.0/24 --nodes-file nodes.json   # standalone
    tulle-agent --node node-1 --control unix:/run/tulle/control.sock           # on the control host
    tulle-agent --node node-2 --control 10.0.0.1:15014 --cert DIR/cert.pem     # another host, mTLS
    tulle-agent --node node-1 --control 172.30.0.254:15014                     # a lab's plaintext underlay

Joined (`--control`, the config API: HOST:PORT or unix:PATH), the agent registers its
Node (InternalIP = `--underlay-ip`, by default the source address of its route to the
control plane), takes the pod CIDR the control plane allocates, and follows the ADS
stream at `--xds` for the node list, namespaces, pods and policies; it serves CNI calls
once the first complete policy state is in force.

Channels: over tulle-control's root-only unix socket the agent needs no credentials.
From another host it speaks mTLS with `--cert` (and `--key`, `--ca`, by default key.pem
and ca.pem beside it), the agent certificate `tulle-control issue-cert --kind agent
--name NODE` wrote: it lets this agent act for NODE only. Over the socket or mTLS,
`--xds` and `--ca-address` default to `--control` (one port serves all three); with a
plaintext HOST:PORT (a lab's underlay) `--xds` defaults to that host's port 15010 and
the CA to the local socket (plaintext TCP obtains no certificates). The agent renews its
certificate itself at half its remaining lifetime, rewriting `--cert` and `--key`
(netpolicy/agent/control_credentials.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from pathlib import Path

import click
from pyroute2 import IPRoute

from cni.overlay import vtep_mac_for
from cni.wire import DEFAULT_AGENT_SOCKET
from netpolicy.agent.agent import AgentConfig, ControlLink, NodeAgent
from netpolicy.agent.control_credentials import CertificateRenewer, CredentialsError
from netpolicy.agent.control_link import (
    ConfigApi,
    ControlAddresses,
    ControlError,
    ControlTls,
    register_node,
)
from netpolicy.agent.identity import DEFAULT_CONTROL_SOCKET
from netpolicy.agent.identity_service import IdentityConfig, serve_with_identity
from netpolicy.agent.server import SocketInUse


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", required=True, help="This node's name (as in the node list).")
@click.option("--socket", "socket_path", default=DEFAULT_AGENT_SOCKET, show_default=True, type=click.Path(path_type=Path), help="Unix socket tulle-cni connects to.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Allocation store directory [default: /var/lib/tulle/agent/NODE].")
@click.option("--pod-cidr", help="This node's pod CIDR, used when a network config has no ipam.subnet.")
@click.option("--nodes-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSON list of tulle.netpolicy.v1.Node: the VXLAN overlay's peers (re-read on SIGHUP).")
@click.option("--control", metavar="ADDRESS", help="tulle-control's config API (HOST:PORT or unix:PATH): join the cluster.")
@click.option("--xds", metavar="ADDRESS", help="tulle-control's ADS server [default: --control when it is a unix socket or --cert is given, else the --control host, port 15010].")
@click.option("--cert", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="This node's agent certificate (tulle-control issue-cert --kind agent): mTLS to a HOST:PORT --control.")
@click.option("--key", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Its key [default: key.pem beside --cert].")
@click.option("--ca", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Tulle's trust bundle [default: ca.pem beside --cert].")
@click.option("--underlay-ip", help="This node's address on the underlay [default: source of the route to --control].")
@click.option("--ca-address", default=None, help=f"tulle-control's CertificateService, for workload certificates ('' turns identity off) [default: --control when it is a unix socket or --cert is given, else {DEFAULT_CONTROL_SOCKET}].")
@click.option("--sds-dir", type=click.Path(path_type=Path), help="Per-pod SDS sockets: SDS_DIR/NAMESPACE/POD/socket [default: beside --socket].")
@click.option("--dns-port", default=53, show_default=True, type=click.IntRange(0, 65535), help="Cluster DNS port on the pods' gateway address, with --control (0: no DNS).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
def command(node: str, socket_path: Path, state_dir: Path | None, pod_cidr: str | None, nodes_file: Path | None,
            control: str | None, xds: str | None, cert: Path | None, key: Path | None, ca: Path | None,
            underlay_ip: str | None, ca_address: str | None, sds_dir: Path | None, dns_port: int,
            log_level: str) -> None:
    """tulle-agent: pod networking (CNI backend, VXLAN overlay) for one node."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cidr = ipaddress.IPv4Network(pod_cidr) if pod_cidr else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--pod-cidr") from None
    tls = _tls(cert, key, ca)
    link = None
    if control:
        try:
            addresses = ControlAddresses.parse(control, xds, tls)
            if not underlay_ip and addresses.xds.startswith("unix:"):
                raise click.BadParameter("needed when tulle-control is reached over a unix socket",
                                         param_hint="--underlay-ip")
            ip = ipaddress.IPv4Address(underlay_ip) if underlay_ip else _source_address(addresses.xds)
            api = ConfigApi(addresses.api, tls=tls)
            allocated = register_node(api, node, ip, vtep_mac_for(ip))
        except (ControlError, CredentialsError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        if cidr is not None and cidr != allocated:
            logging.getLogger("tulle.agent").warning("--pod-cidr %s ignored: tulle-control allocated %s", cidr, allocated)
        cidr = allocated
        link = ControlLink(api, addresses.xds, ip)
    config = AgentConfig(
        node=node,
        socket_path=socket_path,
        state_dir=state_dir or Path("/var/lib/tulle/agent") / node,
        pod_cidr=cidr,
        nodes_file=nodes_file,
        control=link,
        dns_port=dns_port,
    )
    agent = NodeAgent(config)
    renewer = None
    if control and tls is not None and not control.startswith("unix:"):
        renewer = CertificateRenewer(control, node, tls)   # the CA listens where the API does
        renewer.start()
    try:
        for line in agent.start():
            logging.getLogger("tulle.agent").warning("recovery: %s", line)
        if ca_address is None:
            # Only the root-only unix socket or an agent certificate proves a node to the CA.
            if control and (control.startswith("unix:") or tls is not None):
                ca_address = control
            else:
                ca_address = DEFAULT_CONTROL_SOCKET
        asyncio.run(serve_with_identity(agent, IdentityConfig(ca_address, ca_tls=tls, sds_dir=sds_dir)))
    except (SocketInUse, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if renewer is not None:
            renewer.close()
        agent.close()


def _tls(cert: Path | None, key: Path | None, ca: Path | None) -> ControlTls | None:
    if cert is None:
        if key is not None or ca is not None:
            raise click.BadParameter("--key and --ca need --cert", param_hint="--cert")
        return None
    tls = ControlTls(cert, key or cert.with_name("key.pem"), ca or cert.with_name("ca.pem"))
    for flag, path in (("--key", tls.key), ("--ca", tls.ca)):
        if not path.is_file():
            raise click.BadParameter(f"{path} is not a file", param_hint=flag)
    return tls


def _source_address(target: str) -> ipaddress.IPv4Address:
    """The address this namespace sends from towards `target` (HOST:PORT)."""
    host = target.rpartition(":")[0]
    try:
        with IPRoute() as ipr:
            route = ipr.route("get", dst=host)[0]
        return ipaddress.IPv4Address(route.get_attr("RTA_PREFSRC"))
    except Exception as exc:
        raise ControlError(f"--underlay-ip: cannot tell the source address towards {host}: {exc}") from None


def main() -> int:
    try:
        command(standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
