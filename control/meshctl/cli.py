"""Entry point of `meshctl`, the operator's command line (kubectl's verbs for the mesh).

Exit codes, for scripts:
    0  success
    1  the control plane refused or failed the request (invalid, not found, conflict),
       or a manifest could not be read
    2  usage error (unknown command, bad flag)
    3  the control plane could not be reached

Subcommands register on the `cli` group; a part of Tulle with its own verbs adds
itself with one line, `cli.add_command(its_group)`.
"""

from __future__ import annotations

import datetime
import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
import grpc
import yaml
from rich.console import Console

from control import resources
from control.api import version as tulle_version
from control.meshctl import enforcement
from control.meshctl.client import ConfigClient, RequestError, UnreachableError, default_server
from control.meshctl.credentials import ClientCredentials, CredentialsError
from control.meshctl.demo import demo_command
from control.meshctl.describe import describe as describe_text
from control.meshctl.inject import inject_command
from control.meshctl.lab import lab
from control.meshctl.manifests import ManifestError, read_manifests
from control.meshctl.netpol import netpol
from control.meshctl.pod_security import policy_namespaces, security_lines
from control.meshctl.tables import print_table, rows
from control.resources import DEFAULT_NAMESPACE, Kind, UnknownKindError
from control.xds.proxy_commands import DEFAULT_XDS, proxy_config, proxy_status

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
T = TypeVar("T")
Object = dict[str, Any]

# How kubectl names the error classes in `Error from server (<Reason>): ...`.
_REASONS = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.INVALID_ARGUMENT: "BadRequest",
    grpc.StatusCode.OUT_OF_RANGE: "Expired",
    grpc.StatusCode.UNAVAILABLE: "ServiceUnavailable",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
}


@dataclass
class Session:
    server: str
    credentials: ClientCredentials | None = None
    _client: ConfigClient | None = None

    @property
    def client(self) -> ConfigClient:
        if self._client is None:
            self._client = ConfigClient(self.server, credentials=self.credentials)
        return self._client


def _fail(message: str, code: int = FAILED) -> NoReturn:
    click.echo(message, err=True)
    raise click.exceptions.Exit(code)


def _error_text(error: RequestError) -> str:
    message = str(error)
    if error.code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("The "):
        return message  # kubectl prints validation failures as they come
    return f"Error from server ({_REASONS.get(error.code, error.code.name)}): {message}"


def _request(work: Callable[[], T]) -> T:
    """Run one request; a refusal exits 1, an unreachable server exits 3."""
    try:
        return work()
    except UnreachableError as e:
        _fail(f"error: {e}", UNREACHABLE)
    except RequestError as e:
        _fail(_error_text(e))


def _kind(name: str) -> Kind:
    try:
        return resources.lookup(name)
    except UnknownKindError as e:
        _fail(f"error: {e}")


def _default_namespace(document: Any, namespace: str) -> None:
    """kubectl's `apply -n`: a namespaced object without a namespace goes there; one that
    names another namespace is an error."""
    if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
        return  # the server explains what is wrong with it
    try:
        kind = resources.lookup(str(document.get("kind")))
    except UnknownKindError:
        return
    meta = document["metadata"]
    if not kind.namespaced:
        return
    given = meta.setdefault("namespace", namespace)
    if given != namespace:
        _fail(f"error: the namespace from the provided object \"{given}\" does not match the namespace "
              f"\"{namespace}\". You must pass '--namespace={given}' to perform this operation.")


def object_name(obj: Object) -> str:
    """kubectl's `kind.group/name`: `networkpolicy.networking.k8s.io/web`, `service/web`."""
    kind = resources.BY_NAME[obj["kind"]]
    group = f".{kind.group}" if kind.group else ""
    return f"{kind.name.lower()}{group}/{obj['metadata']['name']}"


def _print_objects(objects: Sequence[Object], output: str, single: bool) -> None:
    if single and len(objects) == 1:
        document: Object = objects[0]
    else:
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects), "metadata": {"resourceVersion": ""}}
    if output == "yaml":
        click.echo(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), nl=False)
    else:
        click.echo(json.dumps(document, indent=4))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "-s", default=None, metavar="ADDRESS",
              help="tulle-control's config API: HOST:PORT or unix:/path (default: $TULLE_SERVER, "
                   "the local control plane's socket, then 127.0.0.1:15014)")
@click.option("--cert", envvar="TULLE_CERT", default=None, metavar="PEM",
              help="operator certificate for a HOST:PORT server over mTLS (tulle-control issue-cert) [$TULLE_CERT]")
@click.option("--key", envvar="TULLE_KEY", default=None, metavar="PEM",
              help="its key [$TULLE_KEY; default: key.pem beside --cert]")
@click.option("--ca", envvar="TULLE_CA", default=None, metavar="PEM",
              help="Tulle's trust bundle, to verify tulle-control [$TULLE_CA; default: ca.pem beside --cert]")
@click.pass_context
def cli(ctx: click.Context, server: str | None, cert: str | None, key: str | None, ca: str | None) -> None:
    """meshctl controls the Tulle service mesh.

    \b
    New here?  meshctl demo             builds a two-node lab, deploys a meshed shop and
                                        shows routing, mTLS, policy and outlier ejection
               meshctl lab up           builds a lab of your own (nodes, agents, control)
               eval $(meshctl lab env)  points meshctl at that lab's control plane
    """
    try:
        credentials = ClientCredentials.find(cert, key, ca)
    except CredentialsError as e:
        _fail(f"error: {e}")
    ctx.obj = Session(server or default_server(), credentials)


@cli.command()
@click.option("-f", "--filename", "sources", multiple=True, required=True,
              help="a manifest file, a directory of them, or - for standard input (repeatable)")
@click.option("-R", "--recursive", is_flag=True, help="walk directories given with -f recursively")
@click.option("--dry-run", is_flag=True, help="validate and show the result without storing anything")
@click.option("-o", "--output", type=click.Choice(["name", "yaml", "json"]), default=None)
@click.option("-n", "--namespace", default=None, help="namespace of the namespaced objects that name none")
@click.pass_obj
def apply(session: Session, sources: tuple[str, ...], recursive: bool, dry_run: bool, output: str | None,
          namespace: str | None) -> None:
    """Create or update objects from manifests, all or nothing."""
    try:
        documents = read_manifests(sources, recursive)
    except ManifestError as e:
        _fail(f"error: {e}")
    if namespace:
        for document in documents:
            _default_namespace(document, namespace)
    if not documents:
        _fail("error: no objects passed to apply")
    results, _ = _request(lambda: session.client.apply(documents, dry_run))
    if output in ("yaml", "json"):
        _print_objects([r.object for r in results], output, single=True)
        return
    suffix = " (server dry run)" if dry_run else ""
    for result in results:
        click.echo(object_name(result.object) if output == "name" else f"{object_name(result.object)} {result.outcome}{suffix}")


@cli.command()
@click.argument("kind_arg", metavar="KIND")
@click.argument("names", nargs=-1)
@click.option("-n", "--namespace", default=None)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db")
@click.option("-o", "--output", type=click.Choice(["wide", "yaml", "json", "name"]), default=None)
@click.option("-w", "--watch", is_flag=True, help="after listing, print each change as it happens")
@click.pass_obj
def get(session: Session, kind_arg: str, names: tuple[str, ...], namespace: str | None, all_namespaces: bool,
        selector: str, output: str | None, watch: bool) -> None:
    """List objects of a kind (or of several: svc,ep), or show the named ones."""
    if "," in kind_arg:
        if names or watch or "/" in kind_arg:
            _fail("error: several kinds (KIND,KIND) list all objects of each; name none and do not watch", USAGE)
        _get_kinds(session, [_kind(k) for k in kind_arg.split(",") if k], namespace, all_namespaces, selector, output)
        return
    kind_name, _, slash_name = kind_arg.partition("/")
    kind = _kind(kind_name)
    names = (slash_name, *names) if slash_name else names
    namespace = (namespace or DEFAULT_NAMESPACE) if kind.namespaced else ""
    all_namespaces = all_namespaces and kind.namespaced
    scope = "" if all_namespaces else namespace
    if names and not watch:
        objects = [_request(lambda n=n: session.client.get(kind.name, namespace, n)) for n in names]  # type: ignore[misc]
    else:
        objects, revision = _request(lambda: session.client.list(kind.name, scope, selector))
        if names:
            objects = [o for o in objects if o["metadata"]["name"] in names]
        if not objects and not watch:
            where = "" if all_namespaces or not kind.namespaced else f" in {namespace} namespace"
            click.echo(f"No resources found{where}.", err=True)
            return
    if kind.name in ENFORCED_KINDS and output in (None, "wide"):
        objects = _with_enforcement(objects)
    _print_listing(kind, objects, output, single=len(names) == 1 and not watch, all_namespaces=all_namespaces)
    if not watch:
        return
    try:
        for _, obj, _ in session.client.watch([kind.name], scope, selector, revision):
            if not names or obj["metadata"]["name"] in names:
                if output == "yaml":
                    click.echo("---")
                _print_listing(kind, [obj], output, single=True, all_namespaces=all_namespaces, header=False)
                sys.stdout.flush()
    except KeyboardInterrupt:
        return  # the way a watch ends
    except RequestError as e:
        _fail(_error_text(e))


ENFORCED_KINDS = ("NetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")


def _with_enforcement(objects: list[Object]) -> list[Object]:
    """Policies (of ENFORCED_KINDS) with `status.enforced` = "<agents enforcing this version>/<agents>",
    from the agents' ACKs read over CSDS at tulle-control's xDS address."""
    try:
        held = enforcement.read(DEFAULT_XDS)
    except click.ClickException:
        return objects  # xDS unreachable: the column shows "?"
    out = []
    for obj in objects:
        meta = obj["metadata"]
        name = f"{meta.get('namespace', '')}/{meta['name']}" if obj["kind"] == "NetworkPolicy" else meta["name"]
        nodes = held.nodes_enforcing(obj["kind"], name, str(meta.get("resourceVersion", "")))
        out.append({**obj, "status": {**(obj.get("status") or {}), "enforced": f"{len(nodes)}/{len(held.agents)}"}})
    return out


def _get_kinds(session: Session, kinds: Sequence[Kind], namespace: str | None, all_namespaces: bool,
               selector: str, output: str | None) -> None:
    """`get svc,ep`: one table per kind, names prefixed with the kind, as kubectl prints them."""
    listed: list[tuple[Kind, list[Object]]] = []
    for kind in kinds:
        scope = "" if all_namespaces or not kind.namespaced else (namespace or DEFAULT_NAMESPACE)
        objects, _ = _request(lambda kind=kind, scope=scope: session.client.list(kind.name, scope, selector))  # type: ignore[misc]
        if objects:
            listed.append((kind, objects))
    if not listed:
        click.echo("No resources found.", err=True)
        return
    if output in ("yaml", "json"):
        _print_objects([o for _, objects in listed for o in objects], output, single=False)
        return
    for i, (kind, objects) in enumerate(listed):
        if output == "name":
            _print_listing(kind, objects, output, single=False, all_namespaces=False)
            continue
        if i:
            click.echo()
        prefixed = [{**o, "metadata": {**o["metadata"], "name": object_name(o)}} for o in objects]
        _print_listing(kind, prefixed, output, single=False, all_namespaces=all_namespaces and kind.namespaced)


def _print_listing(kind: Kind, objects: Sequence[Object], output: str | None, single: bool,
                   all_namespaces: bool, header: bool = True) -> None:
    if output in ("yaml", "json"):
        _print_objects(objects, output, single=single)
    elif output == "name":
        for obj in objects:
            click.echo(object_name(obj))
    elif objects or header:
        now = datetime.datetime.now(datetime.UTC)
        headers, body = rows(kind.name, objects, output == "wide", all_namespaces, now)
        console = Console(width=max(200, Console().width), soft_wrap=True)
        print_table(console, headers if header else None, body)


@cli.command()
@click.argument("args", nargs=-1, metavar="[KIND NAME...]")
@click.option("-f", "--filename", "sources", multiple=True, help="delete the objects these manifests name")
@click.option("-R", "--recursive", is_flag=True)
@click.option("-n", "--namespace", default=None)
@click.option("--ignore-not-found", is_flag=True, help="treat an absent object as deleted")
@click.pass_obj
def delete(session: Session, args: tuple[str, ...], sources: tuple[str, ...], recursive: bool,
           namespace: str | None, ignore_not_found: bool) -> None:
    """Delete objects named by manifests (-f) or by KIND NAME..."""
    targets: list[tuple[Kind, str, str]] = []
    if sources:
        if args:
            _fail("error: give either -f or KIND NAME, not both", USAGE)
        try:
            documents = read_manifests(sources, recursive)
        except ManifestError as e:
            _fail(f"error: {e}")
        for document in documents:
            if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
                _fail("error: a manifest document has no metadata")
            kind = _kind(str(document.get("kind")))
            meta = document["metadata"]
            targets.append((kind, meta.get("namespace") or namespace or DEFAULT_NAMESPACE, str(meta.get("name"))))
    else:
        if not args:
            _fail("error: give -f FILE or KIND NAME", USAGE)
        kind_name, _, slash_name = args[0].partition("/")
        kind = _kind(kind_name)
        names = [slash_name] if slash_name else []
        names += list(args[1:])
        if not names:
            _fail(f"error: name a {kind.name} to delete", USAGE)
        targets = [(kind, namespace or DEFAULT_NAMESPACE, name) for name in names]
    failed = False
    if sources:
        targets.reverse()  # objects before the Namespace that holds them, as they were created after it
    for kind, ns, name in targets:
        try:
            session.client.delete(kind.name, ns if kind.namespaced else "", name)
        except UnreachableError as e:
            _fail(f"error: {e}", UNREACHABLE)
        except RequestError as e:
            if ignore_not_found and e.code == grpc.StatusCode.NOT_FOUND:
                continue
            click.echo(_error_text(e), err=True)
            failed = True
            continue
        click.echo(f'{kind.name.lower()}{"." + kind.group if kind.group else ""} "{name}" deleted')
    if failed:
        raise click.exceptions.Exit(FAILED)


@cli.command()
@click.argument("kind_arg", metavar="KIND")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None)
@click.pass_obj
def describe(session: Session, kind_arg: str, name: str | None, namespace: str | None) -> None:
    """Show an object in detail."""
    kind_name, _, slash_name = kind_arg.partition("/")
    kind = _kind(kind_name)
    name = name or slash_name
    if not name:
        _fail(f"error: name a {kind.name} to describe", USAGE)
    namespace = (namespace or DEFAULT_NAMESPACE) if kind.namespaced else ""
    obj = _request(lambda: session.client.get(kind.name, namespace, name))
    endpoints = None
    if kind.name == "Service":
        try:
            endpoints = session.client.get("Endpoints", namespace, name)
        except RequestError:
            endpoints = None
    security = None
    if kind.name == "Pod":
        policies: list[Any] = []
        for ns in policy_namespaces(namespace):
            for policy_kind in ("PeerAuthentication", "AuthorizationPolicy"):
                policies += _request(functools.partial(session.client.list, policy_kind, ns))[0]
        security = security_lines(obj, policies)
    click.echo(describe_text(obj, endpoints, security))


@cli.command()
@click.option("--client", "client_only", is_flag=True, help="only this meshctl's version")
@click.pass_obj
def version(session: Session, client_only: bool) -> None:
    """Print the client's and the control plane's versions."""
    click.echo(f"Client Version: {tulle_version()}")
    if client_only:
        return
    status = _request(session.client.status)
    click.echo(f"Server Version: {status.version}")
    click.echo(f"Server Store: {status.store} (revision {status.revision})")


cli.add_command(lab)
cli.add_command(netpol)
cli.add_command(proxy_status)
cli.add_command(proxy_config)
cli.add_command(inject_command)
cli.add_command(demo_command)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Without standalone mode, click returns an Exit's code instead of raising it.
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="meshctl", standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return FAILED
    except click.UsageError as e:
        e.show()
        return USAGE
    except click.ClickException as e:
        e.show()
        return FAILED
    return OK


if __name__ == "__main__":
    sys.exit(main())
