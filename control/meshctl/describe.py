"""`meshctl describe`: an object as kubectl describes custom resources.

The header (Name, Namespace, Labels, Annotations, API Version, Kind) comes first;
then every other top-level section with camelCase keys spelled as words ("Pod
Selector", "Match Labels") except the keys of data maps (labels, headers), lists as
`- ` items, nested two spaces per level. A
Service also shows its Endpoints, read from the Endpoints object of the same name.
"""

from __future__ import annotations

import re
from typing import Any

Object = dict[str, Any]


def _words(key: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key)
    return spaced[:1].upper() + spaced[1:]


def _map_text(labels: dict[str, str] | None, indent: int) -> str:
    if not labels:
        return "<none>"
    pad = " " * indent
    return f"\n{pad}".join(f"{k}={v}" for k, v in sorted(labels.items()))


# Maps whose keys are data (label keys, header names), printed as written.
_DATA_MAPS = frozenset({"matchLabels", "labels", "selector", "sourceLabels", "nodeSelector", "annotations",
                        "headers", "queryParams", "withoutHeaders", "set", "add", "portLevelMtls"})


def _render(value: Any, depth: int, lines: list[str], data_keys: bool = False) -> None:
    pad = "  " * depth
    if isinstance(value, dict):
        for key, child in value.items():
            label = str(key) if data_keys else _words(str(key))
            if isinstance(child, (dict, list)) and child:
                lines.append(f"{pad}{label}:")
                _render(child, depth + 1, lines, data_keys=str(key) in _DATA_MAPS and not data_keys)
            else:
                lines.append(f"{pad}{label}:  {_scalar(child)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = _block(item, depth + 1)
                lines.append(f"{pad}- {first.lstrip()}")
                lines.extend(rest)
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")


def _block(item: dict[str, Any], depth: int) -> list[str]:
    lines: list[str] = []
    _render(item, depth, lines)
    return lines


def _scalar(value: Any) -> str:
    if value is None or value == {} or value == []:
        return "<none>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe(obj: Object, endpoints: Object | None = None, security: list[str] | None = None) -> str:
    meta = obj["metadata"]
    label = 13
    lines = [f"{'Name:':<{label}} {meta['name']}"]
    if "namespace" in meta:
        lines.append(f"{'Namespace:':<{label}} {meta['namespace']}")
    lines.append(f"{'Labels:':<{label}} {_map_text(meta.get('labels'), label + 1)}")
    lines.append(f"{'Annotations:':<{label}} {_map_text(meta.get('annotations'), label + 1)}")
    lines.append(f"{'API Version:':<{label}} {obj['apiVersion']}")
    lines.append(f"{'Kind:':<{label}} {obj['kind']}")
    lines.append("Metadata:")
    server_owned = {k: meta[k] for k in ("creationTimestamp", "generation", "resourceVersion", "uid") if k in meta}
    _render(server_owned, 1, lines)
    for section, value in obj.items():
        if section in ("apiVersion", "kind", "metadata"):
            continue
        if isinstance(value, (dict, list)) and value:
            lines.append(f"{_words(section)}:")
            _render(value, 1, lines)
        else:
            lines.append(f"{_words(section)}:  {_scalar(value)}")
    if obj["kind"] == "Service":
        lines.append(f"{'Endpoints:':<{label}} {_endpoint_list(endpoints)}")
    lines.extend(security or ())
    lines.append("Events:       <none>")
    return "\n".join(lines)


def _endpoint_list(endpoints: Object | None) -> str:
    if not endpoints:
        return "<none>"
    found: list[str] = []
    for subset in endpoints.get("subsets") or []:
        ports = [p["port"] for p in subset.get("ports") or []] or [None]
        for address in subset.get("addresses") or []:
            found.extend(address["ip"] if p is None else f"{address['ip']}:{p}" for p in ports)
    return ",".join(found) or "<none>"
