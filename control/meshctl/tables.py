"""`meshctl get`'s tables: kubectl's columns for each kind, as data.

Each kind has a list of columns (header, how to compute the cell, shown only with
`-o wide`). NAME comes first, AGE last, NAMESPACE first of all with `-A`. Cells are
plain text; a missing value prints as `<none>`, as kubectl prints it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

Object = dict[str, Any]
NONE = "<none>"


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Object], str]
    wide_only: bool = False


def _spec(obj: Object) -> Object:
    return obj.get("spec") or {}


def _status(obj: Object) -> Object:
    return obj.get("status") or {}


def selector_text(selector: Object | None) -> str:
    """A LabelSelector (or a plain label map) in kubectl's `-l` form."""
    if not selector:
        return NONE
    labels = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    parts = [f"{k}={v}" for k, v in sorted(labels.items()) if isinstance(v, str)]
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            parts.append(f"{key} {'in' if op == 'In' else 'notin'} ({','.join(values)})")
    return ",".join(parts) or NONE


def _pod_selector(obj: Object) -> str:
    selector = _spec(obj).get("podSelector")
    return "<none>" if not selector else selector_text(selector)


def _service_ports(obj: Object) -> str:
    ports = []
    for port in _spec(obj).get("ports") or []:
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        ports.append(f"{port['port']}{node}/{port.get('protocol', 'TCP')}")
    return ",".join(ports) or NONE


def _endpoints(obj: Object) -> str:
    addresses: list[str] = []
    for subset in obj.get("subsets") or []:
        ports = [p["port"] for p in subset.get("ports") or []] or [None]
        for address in subset.get("addresses") or []:
            addresses.extend(address["ip"] if p is None else f"{address['ip']}:{p}" for p in ports)
    if not addresses:
        return NONE
    shown = ",".join(addresses[:3])
    return shown + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")


def _node_ip(obj: Object) -> str:
    for address in _status(obj).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return str(address["address"])
    return NONE


def _node_status(obj: Object) -> str:
    for condition in _status(obj).get("conditions") or []:
        if condition.get("type") == "Ready":
            return "Ready" if condition.get("status") == "True" else "NotReady"
    return "Unknown"


def _pod_ready(obj: Object) -> str:
    containers = _spec(obj).get("containers") or []
    statuses = _status(obj).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{len(containers)}"


def _get(*path: str, default: str = NONE) -> Callable[[Object], str]:
    def cell(obj: Object) -> str:
        value: Any = obj
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if value is None or value == "" or value == []:
            return default
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    return cell


COLUMNS: dict[str, list[Column]] = {
    "Namespace": [Column("STATUS", _get("status", "phase", default="Active"))],
    "Node": [
        Column("STATUS", _node_status),
        Column("POD-CIDR", _get("spec", "podCIDR")),
        Column("INTERNAL-IP", _node_ip),
    ],
    "Pod": [
        Column("READY", _pod_ready),
        Column("STATUS", _get("status", "phase", default="Pending")),
        Column("IP", _get("status", "podIP"), wide_only=True),
        Column("NODE", _get("spec", "nodeName"), wide_only=True),
    ],
    "Service": [
        Column("TYPE", _get("spec", "type", default="ClusterIP")),
        Column("CLUSTER-IP", _get("spec", "clusterIP")),
        Column("EXTERNAL-IP", _get("spec", "externalIPs")),
        Column("PORT(S)", _service_ports),
        Column("SELECTOR", lambda o: selector_text(_spec(o).get("selector")), wide_only=True),
    ],
    "Endpoints": [Column("ENDPOINTS", _endpoints)],
    # ENFORCED: agents enforcing this version / agents connected, filled in by `get` from
    # the agents' ACKs (control.meshctl.enforcement); "?" when those cannot be read.
    "NetworkPolicy": [Column("POD-SELECTOR", _pod_selector), Column("ENFORCED", _get("status", "enforced", default="?"))],
    "AdminNetworkPolicy": [Column("PRIORITY", _get("spec", "priority")), Column("ENFORCED", _get("status", "enforced", default="?"))],
    "BaselineAdminNetworkPolicy": [Column("ENFORCED", _get("status", "enforced", default="?"))],
    "VirtualService": [Column("GATEWAYS", _get("spec", "gateways", default="")), Column("HOSTS", _get("spec", "hosts"))],
    "DestinationRule": [Column("HOST", _get("spec", "host"))],
    "PeerAuthentication": [Column("MODE", _get("spec", "mtls", "mode", default="UNSET"))],
    "AuthorizationPolicy": [Column("ACTION", _get("spec", "action", default="ALLOW"))],
}


def age(timestamp: str | None, now: datetime.datetime) -> str:
    """A short age in kubectl's spirit: 45s, 12m, 5h, 3d."""
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((now - created).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def rows(kind: str, objects: Sequence[Object], wide: bool, all_namespaces: bool,
         now: datetime.datetime) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in COLUMNS[kind] if wide or not c.wide_only]
    headers = [*(["NAMESPACE"] if all_namespaces else []), "NAME", *(c.header for c in columns), "AGE"]
    body = []
    for obj in objects:
        meta = obj["metadata"]
        body.append([
            *([meta.get("namespace", "")] if all_namespaces else []),
            meta["name"],
            *(c.cell(obj) for c in columns),
            age(meta.get("creationTimestamp"), now),
        ])
    return headers, body


def print_table(console: Console, headers: Sequence[str] | None, body: Sequence[Sequence[str]]) -> None:
    """Columns three spaces apart, as kubectl prints them; no header row when `headers`
    is None (the rows of a watch, after the listing's header)."""
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0), header_style="",
                  show_header=headers is not None)
    for header in headers or [""] * (len(body[0]) if body else 0):
        table.add_column(header, no_wrap=True, overflow="ignore")
    for row in body:
        table.add_row(*row)
    with console.capture() as captured:
        console.print(table)
    # Rich pads the last column too; kubectl's lines end at their last character.
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
