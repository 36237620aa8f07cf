"""`meshctl proxy-status` and `meshctl proxy-config`: what tulle-control sends each
connected node, read over CSDS (envoy.service.status.v3) from the xDS port.

    meshctl proxy-status                       # every connected proxy and agent
    meshctl proxy-config NODE clusters         # also listeners, routes, endpoints, nodes, pods
    meshctl proxy-config NODE routes -o json
    meshctl proxy-config NODE secrets --admin 127.0.0.1:15000   # from the proxy's own admin

NODE is a node id or a unique part of one (a pod name works for sidecars).
Register on meshctl's group with `cli.add_command(proxy_status)` and
`cli.add_command(proxy_config)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import click
import grpc
from envoy.service.status.v3 import csds_pb2
from google.protobuf import json_format, symbol_database

import control.xds.sidecar  # noqa: F401 - registers every message type a resource may hold
from control.meshctl.credentials import ClientCredentials, CredentialsError, open_channel
from control.xds.proxy_secrets import DEFAULT_ADMIN, fetch_secrets, node_id, secret_rows
from control.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TULLE_ADMIN_NETWORK_POLICY,
    TULLE_NAMESPACE,
    TULLE_NETWORK_POLICY,
    TULLE_NODE,
    TULLE_POD,
)
from proto.tulle.netpolicy.v1 import (  # noqa: F401 - Tulle's agent types, likewise
    admin_network_policy_pb2,
    namespace_pb2,
    network_policy_pb2,
    node_pb2,
    pod_pb2,
    service_pb2,
)


def _default_xds() -> str:
    """$TULLE_XDS_ADDRESS, the one lab's xDS socket, else where the config API is: every
    tulle-control port (its socket, its mTLS ports) serves CSDS too."""
    from control.meshctl.client import default_server, single_lab_socket

    if address := os.environ.get("TULLE_XDS_ADDRESS"):
        return address
    lab = single_lab_socket("xds.sock")
    return f"unix:{lab}" if lab is not None else default_server()


DEFAULT_XDS = _default_xds()
CSDS_METHOD = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"
COLUMNS = (("CDS", CLUSTER), ("LDS", LISTENER), ("EDS", ENDPOINT), ("RDS", ROUTE), ("NODES", TULLE_NODE), ("PODS", TULLE_POD),
           ("NETPOL", TULLE_NETWORK_POLICY))
KINDS = {"clusters": CLUSTER, "listeners": LISTENER, "routes": ROUTE, "endpoints": ENDPOINT, "nodes": TULLE_NODE, "pods": TULLE_POD,
         "namespaces": TULLE_NAMESPACE, "networkpolicies": TULLE_NETWORK_POLICY,
         "adminnetworkpolicies": TULLE_ADMIN_NETWORK_POLICY}
_STATUS = {csds_pb2.SYNCED: "SYNCED", csds_pb2.STALE: "STALE", csds_pb2.ERROR: "NACKED", csds_pb2.NOT_SENT: "NOT SENT"}


def _session_credentials() -> ClientCredentials | None:
    """The operator credentials meshctl was given (`--cert`, $TULLE_CERT), if any."""
    ctx = click.get_current_context(silent=True)
    credentials = getattr(ctx.find_root().obj, "credentials", None) if ctx is not None else None
    return credentials if isinstance(credentials, ClientCredentials) else None


def fetch(address: str, request: csds_pb2.ClientStatusRequest,
          credentials: ClientCredentials | None = None) -> csds_pb2.ClientStatusResponse:
    """CSDS from `address`, over mTLS with `credentials` (default: meshctl's own)."""
    try:
        with open_channel(address, credentials or _session_credentials()) as channel:
            call = channel.unary_unary(
                CSDS_METHOD,
                request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                response_deserializer=csds_pb2.ClientStatusResponse.FromString,
            )
            response: csds_pb2.ClientStatusResponse = call(request, timeout=10)
            return response
    except grpc.RpcError as e:
        raise click.ClickException(f"cannot read proxy status from tulle-control at {address}: {e.details()}") from None
    except CredentialsError as e:
        raise click.ClickException(str(e)) from None


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


@click.command("proxy-status")
@click.option("--xds", "address", default=DEFAULT_XDS, show_default=True, help="tulle-control's xDS address")
def proxy_status(address: str) -> None:
    """Every node connected to tulle-control: kind, protocol, and per resource type the
    last ACKed version, pushes awaiting an ACK, and the last NACK."""
    response = fetch(address, csds_pb2.ClientStatusRequest(exclude_resource_contents=True))
    rows = [["NAME", "KIND", "XDS", *(c for c, _ in COLUMNS)]]
    nacks = []
    for config in response.config:
        meta = json_format.MessageToDict(config.node.metadata)
        pending = meta.get("TULLE_PENDING", {})
        by_type = {g.type_url: g for g in config.generic_xds_configs}
        cells = []
        for _, type_url in COLUMNS:
            g = by_type.get(type_url)
            if g is None:
                cells.append("-")
                continue
            text = f"{_STATUS.get(g.config_status, 'UNKNOWN')} ({g.version_info[:8] or 'none'})"
            if int(pending.get(type_url, 0)):
                text += f" +{int(pending[type_url])} pending"
            cells.append(text)
            if g.error_state.details:
                nacks.append((config.node.id, type_url.rsplit(".", 1)[-1], g.error_state.version_info[:8], g.error_state.details.strip()))
        rows.append([config.node.id, meta.get("TULLE_KIND", "?"), meta.get("TULLE_VARIANT", "?"), *cells])
    click.echo(_table(rows))
    for node, kind, version, message in nacks:
        click.echo(f"\nlast NACK from {node} for {kind} version {version}:\n  {message}")


@click.command("proxy-config")
@click.argument("node")
@click.argument("kind", type=click.Choice(sorted([*KINDS, "secrets"])))
@click.option("-o", "--output", type=click.Choice(["short", "json"]), default="short", show_default=True)
@click.option("--xds", "address", default=DEFAULT_XDS, show_default=True, help="tulle-control's xDS address")
@click.option("--admin", default=DEFAULT_ADMIN, show_default=True, help="the proxy's admin address (secrets only)")
def proxy_config(node: str, kind: str, output: str, address: str, admin: str) -> None:
    """What tulle-control sends NODE of one resource KIND; for `secrets`, the
    certificates the proxy at --admin holds (they come from its node agent)."""
    if kind == "secrets":
        _secrets(node, admin, output)
        return
    response = fetch(address, csds_pb2.ClientStatusRequest())
    matches = [c for c in response.config if c.node.id == node] or [c for c in response.config if node in c.node.id]
    if not matches:
        raise click.ClickException(f"no node matching {node!r} is connected to tulle-control at {address}")
    if len(matches) > 1:
        raise click.ClickException(f"{node!r} matches {len(matches)} nodes: " + ", ".join(c.node.id for c in matches))
    type_url = KINDS[kind]
    resources = [
        json_format.MessageToDict(_unpack(g.xds_config), preserving_proto_field_name=True)
        for g in matches[0].generic_xds_configs
        if g.type_url == type_url and g.HasField("xds_config")
    ]
    if output == "json":
        click.echo(json.dumps(resources, indent=2))
        return
    click.echo(_table(_SHORT[kind](resources)))


def _secrets(node: str, admin: str, output: str) -> None:
    try:
        serving = node_id(admin)
        dump = fetch_secrets(admin)
    except (ConnectionError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if node not in serving:
        raise click.ClickException(f"the proxy at {admin} is {serving!r}, not {node!r}")
    if output == "json":
        click.echo(json.dumps(dump, indent=2))
        return
    click.echo(_table(secret_rows(dump)))


def _unpack(packed: Any) -> Any:
    message = symbol_database.Default().GetSymbol(packed.type_url.rsplit("/", 1)[-1])()
    packed.Unpack(message)
    return message


def _clusters(rs: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["NAME", "TYPE", "LB POLICY"]]
    rows += [[c["name"], c.get("type", "STATIC"), c.get("lb_policy", "ROUND_ROBIN")] for c in rs]
    return rows


def _listeners(rs: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["NAME", "ADDRESS", "PORT", "BOUND"]]
    for li in rs:
        sa = li.get("address", {}).get("socket_address", {})
        rows.append([li["name"], sa.get("address", "-"), str(sa.get("port_value", "-")), str(li.get("bind_to_port", True))])
    return rows


def _routes(rs: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["NAME", "VIRTUAL HOST", "DOMAINS", "ROUTES"]]
    for rc in rs:
        for vh in rc.get("virtual_hosts", []):
            rows.append([rc["name"], vh["name"], str(len(vh.get("domains", []))), str(len(vh.get("routes", [])))])
    return rows


def _endpoints(rs: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["ENDPOINT", "STATUS", "CLUSTER"]]
    for cla in rs:
        for group in cla.get("endpoints", []):
            for e in group.get("lb_endpoints", []):
                sa = e["endpoint"]["address"]["socket_address"]
                rows.append([f"{sa['address']}:{sa.get('port_value', 0)}", e.get("health_status", "UNKNOWN"), cla["cluster_name"]])
    return rows


def _nodes(rs: list[dict[str, Any]]) -> list[list[str]]:
    return [["NAME", "UNDERLAY IP", "POD CIDR", "VTEP MAC"]] + [
        [n["name"], n.get("underlay_ip", ""), n.get("pod_cidr", ""), n.get("vtep_mac", "")] for n in rs
    ]


def _pods(rs: list[dict[str, Any]]) -> list[list[str]]:
    return [["NAMESPACE", "NAME", "IP", "NODE"]] + [
        [p.get("namespace", ""), p["name"], p.get("ip", ""), p.get("node_name", "")] for p in rs
    ]


def _namespaces(rs: list[dict[str, Any]]) -> list[list[str]]:
    return [["NAME", "LABELS", "RESOURCE VERSION"]] + [
        [n["name"], ",".join(f"{k}={v}" for k, v in sorted(n.get("labels", {}).items())), n.get("resource_version", "")]
        for n in rs
    ]


def _network_policies(rs: list[dict[str, Any]]) -> list[list[str]]:
    return [["NAMESPACE", "NAME", "RESOURCE VERSION"]] + [
        [p.get("namespace", ""), p["name"], p.get("resource_version", "")] for p in rs
    ]


def _admin_network_policies(rs: list[dict[str, Any]]) -> list[list[str]]:
    return [["KIND", "NAME", "RESOURCE VERSION"]] + [
        ["BaselineAdminNetworkPolicy" if p.get("baseline") else "AdminNetworkPolicy", p["name"], p.get("resource_version", "")]
        for p in rs
    ]


_SHORT = {"namespaces": _namespaces, "networkpolicies": _network_policies, "adminnetworkpolicies": _admin_network_policies, "clusters": _clusters, "listeners": _listeners, "routes": _routes, "endpoints": _endpoints, "nodes": _nodes, "pods": _pods}
