"""`meshctl demo [--rm]`: the whole mesh on one machine, in about a minute.

It builds a two-node lab (tulle-control on its embedded SQLite store, a tulle-agent per
node, pods in network namespaces wired by tulle-cni over a VXLAN overlay), deploys a shop
(`shop.yaml`: a frontend calling catalog v1 and v2 across the nodes, a 90/10
VirtualService, a least-request DestinationRule with outlier detection, PeerAuthentication
STRICT, default-deny NetworkPolicies), drives bounded traffic and prints what it observed
(`scenario` collects, `report` prints). The lab stays up for exploring unless `--rm`;
running the demo again replaces it.
"""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console

from cni.lab import LabError
from control.meshctl.demo.report import print_report
from control.meshctl.demo.scenario import Demo, DemoError

LAB_NAME = "demo"


@click.command("demo", short_help="Build a lab, deploy a meshed shop, show routing, mTLS, policy, ejection.")
@click.option("--rm", "remove", is_flag=True, help="Tear the lab down after the report.")
@click.option("--requests", default=1000, show_default=True, type=click.IntRange(20, 10_000),
              help="Requests per traffic run (three runs).")
def demo_command(remove: bool, requests: int) -> None:
    """Build a lab, deploy a meshed shop, show routing, mTLS, policy and outlier ejection."""
    # Wide enough for the identities when the output is a file or a pipe (CI logs).
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    started = time.monotonic()
    demo = Demo(LAB_NAME, requests, lambda line: console.print(f"[dim]· {line}[/dim]"))
    try:
        findings = demo.run()
    except (DemoError, LabError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        if demo.lab is not None:
            console.print(f"[dim]the lab is left up for a look; remove it with: meshctl lab down --name {LAB_NAME}[/dim]")
        raise click.exceptions.Exit(1) from None
    print_report(console, findings, time.monotonic() - started, lab_stays=not remove)
    if remove and demo.lab is not None:
        leftovers = demo.lab.down()
        if leftovers:
            console.print("[red]could not remove:[/red] " + "; ".join(leftovers))
            raise click.exceptions.Exit(1)
        console.print(f"lab {LAB_NAME!r} removed (--rm).")
    else:
        console.print(f"\nThe lab stays up. Tear it down with: [bold]meshctl lab down --name {LAB_NAME}[/bold]")
