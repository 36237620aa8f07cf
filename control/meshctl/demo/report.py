"""The demo's report: what each step observed, in the words a newcomer needs, with the
commands that show the same thing on the live lab."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from control.meshctl.demo.scenario import FAILING, NAMESPACE, Findings


def _share(part: int, whole: int) -> str:
    return f"{part} ({100 * part / whole:.1f}%)" if whole else str(part)


def _statuses(run: Mapping[str, Any]) -> str:
    parts = [f"{status}: {count}" for status, count in sorted(run.get("statuses", {}).items())]
    parts += [f"{error}: {count}" for error, count in sorted(run.get("errors", {}).items())]
    return ", ".join(parts) or "nothing"


def _by_pod(run: Mapping[str, Any], version: str) -> str:
    pods = {pod: n for pod, n in sorted(run.get("pods", {}).items()) if pod.startswith(f"catalog-{version}")}
    return ", ".join(f"{pod} {n}" for pod, n in pods.items())


def print_report(console: Console, f: Findings, seconds: float, lab_stays: bool = True) -> None:
    console.print()
    console.rule(f"[bold]Tulle demo: a meshed shop on a two-node lab[/bold] ({seconds:.0f} s)")

    table = Table(title="Pods (meshctl lab status --name demo)", title_justify="left")
    for column in ("POD", "NODE", "IP", "SIDECAR", "IDENTITY (SPIFFE)"):
        table.add_column(column)
    for pod in f.pods:
        table.add_row(pod["pod"], pod["node"], pod["ip"], pod["sidecar"], pod["identity"])
    console.print(table)
    console.print(f"Applied: {', '.join(f.applied)}.\n")

    split = f.split
    total = sum(split.get("versions", {}).values())
    console.print("[bold]1. Routing: the VirtualService splits catalog traffic 90/10 between versions[/bold]")
    console.print(f"   {split.get('requests')} requests from shop/frontend to http://catalog.shop:8080/ "
                  f"in {split.get('seconds')} s: {_statuses(split)}")
    for version in ("v1", "v2"):
        count = split.get("versions", {}).get(version, 0)
        console.print(f"   {version}: {_share(count, total)}   [dim]{_by_pod(split, version)}[/dim]")
    console.print("   Each request left the frontend as plain HTTP to a name; capture sent it to the frontend's "
                  "sidecar, which picked a version by weight and a pod by least request, on either node.\n")

    console.print("[bold]2. Identity: every hop is mutual TLS (PeerAuthentication STRICT)[/bold]")
    for caller, n in split.get("callers", {}).items():
        console.print(f"   the catalog's sidecars verified the caller as [cyan]{caller}[/cyan] ({n} requests)")
    for server, n in split.get("servers", {}).items():
        console.print(f"   and presented themselves as            [cyan]{server}[/cyan] ({n} requests)")
    meshed = [pod["pod"] for pod in f.pods if pod["sidecar"] != "none"]
    signed = [pod for pod in meshed if pod in f.issued]
    console.print(f"   {len(signed)} of {len(meshed)} sidecars made their own private key and sent only a CSR; their "
                  "nodes' agents vouched for each pod by its network namespace and had tulle-control's CA sign it.")
    u = f.underlay
    verdict = "[green]no plaintext HTTP[/green]" if u.get("plaintext_http_segments") == 0 else \
        f"[red]{u.get('plaintext_http_segments')} plaintext HTTP segments[/red] {u.get('samples')}"
    console.print(f"   On the wire (raw capture on node-1's underlay link): {u.get('vxlan_frames')} VXLAN frames, "
                  f"{u.get('tcp_payload_segments')} pod-to-pod TCP segments with data, {verdict}.\n")

    refused = f.refused
    console.print("[bold]3. Network policy: the catalog only takes connections from the frontend[/bold]")
    if refused.get("status"):
        console.print(f"   [red]shop/visitor → catalog:8080 got HTTP {refused['status']}: policy NOT enforced[/red]")
    else:
        console.print(f"   shop/visitor (no labels, no sidecar) → catalog:8080: no connection within "
                      f"{refused.get('seconds')} s (dropped by the node's nftables)")
    for line in f.explain.splitlines():
        console.print(f"   [dim]{line}[/dim]")
    console.print()

    o, later = f.outlier, f.after_ejection
    console.print("[bold]4. Resilience: a failing catalog pod is retried around, then ejected[/bold]")
    console.print(f"   {FAILING} now answers 503. Next {o.get('requests')} requests: {_statuses(o)} "
                  f"(the sidecar retried {o.get('retries', 0)} times on other pods)")
    console.print(f"   outlier detection ejected {FAILING} after 3 consecutive 5xx "
                  f"(ejections: {o.get('ejections', 0)}, ejected now: {o.get('ejected_now', 0)})")
    later_total = sum(later.get("versions", {}).values())
    console.print(f"   While ejected, {later.get('requests')} more requests: {_statuses(later)}; "
                  f"{FAILING} received {f.failing_pod_requests}; "
                  f"v1 {_share(later.get('versions', {}).get('v1', 0), later_total)} "
                  f"[dim]{_by_pod(later, 'v1')}[/dim]\n")

    if not lab_stays:
        console.print("[bold]Look closer[/bold]: run the demo without --rm; its lab stays up for these:")
    else:
        console.print("[bold]Look closer[/bold] (the lab is named 'demo'):")
    venv_bin = Path(sys.executable).parent
    if shutil.which("meshctl") != str(venv_bin / "meshctl"):
        console.print(f"   [bold]export PATH={venv_bin}:$PATH[/bold]\n      [dim]meshctl is in the venv[/dim]")
    for command, why in (
        (f"eval $(meshctl lab env --name {f.lab})", "point meshctl at the lab's tulle-control"),
        ("meshctl proxy-status", "every sidecar and agent, and whether it has the latest config"),
        ("meshctl proxy-config frontend.shop clusters", "what the frontend's sidecar was sent (also listeners, routes)"),
        (f"meshctl lab exec --name {f.lab} {NAMESPACE}/frontend -- meshctl proxy-config frontend.shop secrets",
         "the certificate the frontend's sidecar holds"),
        (f"meshctl netpol explain {NAMESPACE}/visitor {NAMESPACE}/catalog-v1-a 8080/TCP", "why policy drops it"),
        (f"meshctl get virtualservice catalog -n {NAMESPACE} -o yaml", "the routing config (also destinationrule)"),
    ):
        console.print(f"   [bold]{command}[/bold]\n      [dim]{why}[/dim]")
