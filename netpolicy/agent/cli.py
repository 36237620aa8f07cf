"""Entry point of `tulle-agent --node NAME ...`, the per-node agent.

Run it inside the node's network namespace: every link, route and sysctl it
touches belongs to the namespace it runs in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from pathlib import Path

import click

from cni.wire import DEFAULT_AGENT_SOCKET
from netpolicy.agent.agent import AgentConfig, NodeAgent
from netpolicy.agent.identity import DEFAULT_CONTROL_SOCKET
from netpolicy.agent.identity_service import IdentityConfig, serve_with_identity
from netpolicy.agent.server import SocketInUse


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", required=True, help="This node's name (as in the node list).")
@click.option("--socket", "socket_path", default=DEFAULT_AGENT_SOCKET, show_default=True, type=click.Path(path_type=Path), help="Unix socket tulle-cni connects to.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Allocation store directory [default: /var/lib/tulle/agent/NODE].")
@click.option("--pod-cidr", help="This node's pod CIDR, used when a network config has no ipam.subnet.")
@click.option("--nodes-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSON list of tulle.netpolicy.v1.Node: the VXLAN overlay's peers (re-read on SIGHUP).")
@click.option("--ca-address", default=DEFAULT_CONTROL_SOCKET, show_default=True, help="tulle-control's CertificateService, for workload certificates ('' turns identity off).")
@click.option("--sds-dir", type=click.Path(path_type=Path), help="Per-pod SDS sockets: SDS_DIR/NAMESPACE/POD/socket [default: beside --socket].")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
def command(node: str, socket_path: Path, state_dir: Path | None, pod_cidr: str | None, nodes_file: Path | None, ca_address: str, sds_dir: Path | None, log_level: str) -> None:
    """tulle-agent: pod networking (CNI backend, VXLAN overlay) for one node."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cidr = ipaddress.IPv4Network(pod_cidr) if pod_cidr else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--pod-cidr") from None
    config = AgentConfig(
        node=node,
        socket_path=socket_path,
        state_dir=state_dir or Path("/var/lib/tulle/agent") / node,
        pod_cidr=cidr,
        nodes_file=nodes_file,
    )
    agent = NodeAgent(config)
    try:
        for line in agent.start():
            logging.getLogger("tulle.agent").warning("recovery: %s", line)
        asyncio.run(serve_with_identity(agent, IdentityConfig(ca_address, sds_dir=sds_dir)))
    except SocketInUse as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        agent.close()


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
