"""`meshctl lab ...`: a simulated cluster on this machine (see cni.lab).

    meshctl lab up [--nodes N] [--name NAME]
    meshctl lab down [--name NAME]
    meshctl lab env [--name NAME]          # eval $(meshctl lab env): meshctl talks to the lab
    meshctl lab status [--name NAME] [-o json]
    meshctl lab pod add NS/NAME [--node N] [--labels k=v,...] [--port H:C[/P]] [--name NAME]
    meshctl lab pod del NS/NAME [--name NAME]
    meshctl lab pod label NS/NAME --labels k=v,... [--name NAME]
    meshctl lab ns label NS --labels k=v,... [--name NAME]
    meshctl lab exec NS/NAME [--name NAME] -- CMD...

The lab name defaults to $TULLE_LAB, else "default".
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from cni.lab import Lab, LabError
from cni.lab.topology import check_namespace, parse_labels, parse_pod_ref, parse_port

F = TypeVar("F", bound=Callable[..., Any])


def _lab_name(f: F) -> F:
    return click.option(
        "--name", "--lab", "lab_name", default=lambda: os.environ.get("TULLE_LAB", "default"),
        show_default="$TULLE_LAB or default", help="The lab to act on.",
    )(f)


def _open(name: str) -> Lab:
    try:
        return Lab.open(name)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("lab")
def lab() -> None:
    """A small cluster on this machine: nodes and pods in network namespaces."""


@lab.command()
@click.option("--nodes", default=2, show_default=True, type=int, help="How many nodes.")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Run tulle-control in the lab; the agents join it (policies, pod addresses, node list).")
@_lab_name
def up(nodes: int, control: bool, lab_name: str) -> None:
    """Build the lab: an underlay, tulle-control, N nodes, a tulle-agent on each.

    meshctl finds the lab's control plane by itself while it is the only lab up (and no
    local tulle-control runs); otherwise set the two variables `lab up` prints."""
    try:
        built = Lab.up(lab_name, nodes, control=control)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    for node in built.nodes():
        click.echo(f"{node.name}: underlay {node.underlay_ip}, pods {node.pod_cidr}, agent pid {node.agent_pid}")
    click.echo(f"lab {lab_name!r} is up ({len(built.nodes())} nodes); add pods with: meshctl lab pod add NS/NAME")
    if built.has_control:
        for key, value in built.control_addresses().items():
            click.echo(f"export {key}={value}")


@lab.command(short_help="Print the exports that point meshctl at the lab's control plane.")
@_lab_name
def env(lab_name: str) -> None:
    """Print the exports that point meshctl at the lab's control plane: eval $(meshctl lab env)."""
    built = _open(lab_name)
    if not built.has_control:
        raise click.ClickException(f"lab {lab_name!r} runs no control plane")
    for key, value in built.control_addresses().items():
        click.echo(f"export {key}={value}")


@lab.command()
@_lab_name
def down(lab_name: str) -> None:
    """Remove the lab: pods, agents, namespaces and files."""
    try:
        problems = Lab(lab_name).down()
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    if problems:
        raise click.ClickException("lab down left:\n  " + "\n  ".join(problems))
    click.echo(f"lab {lab_name!r} is down")


@lab.command()
@_lab_name
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(lab_name: str, output: str) -> None:
    """Show the lab's nodes and pods."""
    state = _open(lab_name).status()
    if output == "json":
        click.echo(json.dumps(state, indent=2))
        return
    console = Console()
    nodes = Table(title=f"lab {lab_name} — nodes")
    for column in ("NODE", "UNDERLAY", "POD CIDR", "AGENT", "PODS"):
        nodes.add_column(column)
    for n in state["nodes"]:
        nodes.add_row(n["name"], n["underlayIp"], n["podCidr"], f"{n['agent']} ({n['agentPid']})", str(n["pods"]))
    console.print(nodes)
    pods = Table(title=f"lab {lab_name} — pods")
    for column in ("POD", "NODE", "IP", "LABELS"):
        pods.add_column(column)
    for p in state["pods"]:
        pods.add_row(f"{p['namespace']}/{p['name']}", p["node"], p["ip"], _format_labels(p["labels"]))
    console.print(pods)


@lab.group()
def pod() -> None:
    """Add and remove pods."""


@pod.command("add")
@click.argument("ref", metavar="NS/NAME")
@click.option("--node", help="Node to place the pod on (node-N or N); default: the one with the fewest pods.")
@click.option("--labels", default="", help="Pod labels, k=v,k2=v2.")
@click.option("--port", "ports", multiple=True, metavar="HOST:CONTAINER[/PROTO]",
              help="Publish a pod port on its node (hostPort, through portmap); repeatable.")
@click.option("--inject", is_flag=True,
              help="Mesh the pod: transparent capture and a tulle-proxy sidecar, ready before the app starts.")
@click.option("--annotation", "annotations", multiple=True, metavar="KEY=VALUE",
              help="A Pod annotation (e.g. traffic.tulle.io/excludeOutboundPorts=5432); repeatable.")
@click.option("--app", default="", metavar="'CMD ARGS'",
              help="The pod's app, run in its network namespace (after its sidecar is ready); "
                   "when it exits, the sidecar is told to quit.")
@click.option("--proxy", default="", metavar="PATH", help="The sidecar's binary [default: tulle-proxy beside meshctl].")
@click.option("--service-account", default="", metavar="NAME", help="The pod's service account: its mesh identity [default: default].")
@_lab_name
def pod_add(ref: str, node: str | None, labels: str, ports: tuple[str, ...], inject: bool, annotations: tuple[str, ...],
            app: str, proxy: str, service_account: str, lab_name: str) -> None:
    """Create a pod and attach it through tulle-cni."""
    notes = {}
    for item in annotations:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--annotation")
        notes[key] = value
    try:
        namespace, name = parse_pod_ref(ref)
        created = _open(lab_name).add_pod(
            namespace, name, node=node, labels=parse_labels(labels), ports=[parse_port(p) for p in ports],
            annotations=notes, inject=inject, app=shlex.split(app), proxy=[proxy] if proxy else None,
            service_account=service_account,
        )
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"pod {created.key} on {created.node}: {created.ip}")


@pod.command("del")
@click.argument("ref", metavar="NS/NAME")
@_lab_name
def pod_del(ref: str, lab_name: str) -> None:
    """Detach (CNI DEL) and remove a pod."""
    try:
        namespace, name = parse_pod_ref(ref)
        _open(lab_name).delete_pod(namespace, name)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"pod {namespace}/{name} deleted")


@pod.command("label")
@click.argument("ref", metavar="NS/NAME")
@click.option("--labels", required=True, help="The pod's complete new label set, k=v,k2=v2 ('' for none).")
@_lab_name
def pod_label(ref: str, labels: str, lab_name: str) -> None:
    """Replace a pod's labels."""
    try:
        namespace, name = parse_pod_ref(ref)
        updated = _open(lab_name).set_pod_labels(namespace, name, parse_labels(labels))
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"pod {updated.key} labels: {_format_labels(updated.labels)}")


@lab.group("ns")
def ns() -> None:
    """Label namespaces (namespaceSelector)."""


@ns.command("label")
@click.argument("namespace")
@click.option("--labels", required=True, help="The namespace's complete new label set, k=v,k2=v2.")
@_lab_name
def ns_label(namespace: str, labels: str, lab_name: str) -> None:
    """Replace a namespace's labels (kubernetes.io/metadata.name always stays)."""
    try:
        updated = _open(lab_name).set_namespace_labels(check_namespace(namespace), parse_labels(labels))
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"namespace {namespace} labels: {_format_labels(updated)}")


def _format_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


@lab.command("exec")
@click.argument("ref", metavar="NS/NAME")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@_lab_name
def exec_(ref: str, command: tuple[str, ...], lab_name: str) -> None:
    """Run a command in a pod's network namespace.

    meshctl lab exec NS/NAME -- CMD [ARGS...]
    """
    if command[:1] == ("--",):
        command = command[1:]
    if not command:
        raise click.UsageError("missing the command to run after --")
    try:
        namespace, name = parse_pod_ref(ref)
        running = _open(lab_name)
        done = running.exec(running.pod(namespace, name), command, timeout=None)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    except FileNotFoundError as exc:
        raise click.ClickException(f"cannot run {command[0]!r}: {exc.strerror}") from None
    sys.exit(done.returncode)
