"""`meshctl netpol`: NetworkPolicy tools over the control plane.

    meshctl netpol conformance ../shared/conformance/netpol --only 'np-*' --nodes 2 --json out.json
    meshctl netpol explain x/a y/b 80/TCP

`conformance` runs a corpus (a folder with `cases/` and `topologies/`) in a lab of its own
(`control.meshctl.conformance`), prints a per-case table and the mismatches, writes JSON,
and exits 0 only if every case passed (SCTP probes are reported as not run). A relative
CORPUS that does not exist from the current directory is looked up from the repository's
root (then its parents), so `../shared/conformance/netpol` works from anywhere.

`explain` answers "why is this traffic allowed or dropped": it reads the namespaces, pods
and NetworkPolicies from tulle-control, and netpolicy's evaluator names the policies that
select the source (egress) and the destination (ingress) and the rule that decided.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time
from pathlib import Path
from typing import Any

import click

from control.meshctl.client import ConfigClient, RequestError, UnreachableError, default_server
from netpolicy.cluster import ClusterState, ContainerPort, Namespace, Pod
from netpolicy.conformance.corpus import CorpusError, load_corpus
from netpolicy.conformance.runner import RunOptions, run_cases
from netpolicy.evaluate import explain as explain_traffic
from netpolicy.model import NetworkPolicy, PolicyError, Protocol, parse_policy

REPOSITORY = Path(__file__).resolve().parents[2]


def resolve_corpus(path: str) -> Path:
    """`path` as given; if relative and absent, from the repository's root (or, for a
    worktree nested below the checkout that holds `shared/`, from its ancestors).
    It must hold cases/."""
    given = Path(path)
    bases = [Path.cwd(), REPOSITORY, *REPOSITORY.parents] if not given.is_absolute() else [Path("/")]
    for base in bases:
        candidate = base / given
        if (candidate / "cases").is_dir():
            return candidate.resolve()
    raise click.ClickException(f"CORPUS: no conformance corpus (a folder with cases/) at {path}, "
                               f"from {Path.cwd()} or from the repository {REPOSITORY} or its parents")


@click.group("netpol")
def netpol() -> None:
    """NetworkPolicy: conformance runs and traffic explanations."""


@netpol.command()
@click.argument("corpus")
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 8), help="Lab nodes (pods spread over them).")
@click.option("--only", metavar="GLOB", help="Only cases whose name matches, e.g. 'np-*' or 'anp-*,banp-*'.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 512), help="Probes in flight.")
@click.option("--timeout", default=2.0, show_default=True, help="Per probe, seconds.")
def conformance(corpus: str, nodes: int, only: str | None, json_file: Path | None, concurrency: int, timeout: float) -> None:
    """Run a NetworkPolicy conformance corpus in a lab through tulle-control."""
    from control.meshctl.conformance import LabBackend

    root = resolve_corpus(corpus)
    try:
        cases = load_corpus(root, only)
    except (CorpusError, OSError) as e:
        raise click.ClickException(f"CORPUS: {e}") from None
    if not cases:
        raise click.ClickException(f"no case of {root} matches --only {only!r}")
    backend = LabBackend(nodes)
    started = time.monotonic()

    async def run() -> Any:
        try:
            await asyncio.to_thread(backend.up)
            return await run_cases(cases, backend, backend, RunOptions(timeout=timeout, concurrency=concurrency))
        finally:
            problems = await backend.down()
            for p in problems:
                click.echo(f"lab down: {p}", err=True)

    report = asyncio.run(run())
    wall = time.monotonic() - started
    click.echo(report.table())
    click.echo(f"{nodes} node(s), wall time {wall:.1f} s; waited {backend.sync_seconds:.1f} s in {backend.syncs} "
               "waits for every agent's ACK")
    if json_file is not None:
        json_file.write_text(report.as_json() + "\n")
    sys.exit(0 if report.passed else 1)


@netpol.command()
@click.argument("src")
@click.argument("dst")
@click.argument("port_proto", metavar="PORT/PROTO")
@click.pass_obj
def explain(obj: Any, src: str, dst: str, port_proto: str) -> None:
    """Why traffic from SRC to DST on PORT/PROTO is allowed or dropped.

    SRC and DST are NAMESPACE/POD or an IP address; PORT/PROTO is e.g. 80/TCP."""
    port_text, _, proto_text = port_proto.partition("/")
    try:
        port = int(port_text)
        protocol = Protocol((proto_text or "TCP").upper())
    except ValueError:
        raise click.BadParameter(f"{port_proto!r}: expected PORT/PROTO such as 80/TCP", param_hint="PORT/PROTO") from None
    client = ConfigClient(getattr(obj, "server", None) or default_server())
    try:
        state = cluster_state(client)
    except (RequestError, UnreachableError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        client.close()
    source, destination = _endpoint(state, src, "SRC"), _endpoint(state, dst, "DST")
    click.echo(explain_traffic(state, source, destination, port, protocol).render(source, destination, port, protocol))


def cluster_state(client: ConfigClient) -> ClusterState:
    """The policy model of what tulle-control stores (pods with an address only)."""
    namespaces = [Namespace.create(d["metadata"]["name"], d["metadata"].get("labels") or {})
                  for d in client.list("Namespace")[0]]
    pods = []
    for d in client.list("Pod")[0]:
        ip = (d.get("status") or {}).get("podIP")
        if not ip:
            continue
        ports = tuple(ContainerPort(int(p["containerPort"]), Protocol(p.get("protocol", "TCP")), p.get("name"))
                      for c in (d.get("spec") or {}).get("containers") or () for p in c.get("ports") or ())
        pods.append(Pod(d["metadata"]["namespace"], d["metadata"]["name"], d["metadata"].get("labels") or {},
                        ipaddress.IPv4Address(ip), (d.get("spec") or {}).get("nodeName", ""), ports))
    policies: list[NetworkPolicy] = []
    for d in client.list("NetworkPolicy")[0]:
        try:
            parsed = parse_policy({k: d[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in d})
        except PolicyError as e:
            raise click.ClickException(f"stored NetworkPolicy is not enforceable: {e}") from None
        assert isinstance(parsed, NetworkPolicy)
        policies.append(parsed)
    return ClusterState.build(namespaces, pods, policies)


def _endpoint(state: ClusterState, text: str, what: str) -> Any:
    if "/" in text:
        namespace, _, name = text.partition("/")
        pod = state.pods.get((namespace, name))
        if pod is None:
            raise click.BadParameter(f"no pod {text} with an address in tulle-control", param_hint=what)
        return pod
    try:
        return state.endpoint(ipaddress.ip_address(text))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected NAMESPACE/POD or an IP address", param_hint=what) from None
