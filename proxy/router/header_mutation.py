"""Envoy's `*_headers_to_add` / `*_headers_to_remove`: compiled once, applied per request.

Rules (envoy.config.core.v3.HeaderValueOption):
- per level, removals happen before additions;
- `append_action` decides what an addition does: APPEND_IF_EXISTS_OR_ADD (the default) adds
  another line, ADD_IF_ABSENT adds only when the header is missing,
  OVERWRITE_IF_EXISTS_OR_ADD replaces every line, OVERWRITE_IF_EXISTS replaces only when
  present; the deprecated `append: false` means OVERWRITE_IF_EXISTS_OR_ADD;
- a value whose substitution comes out empty is not added unless `keep_empty_value`;
- values may hold Envoy's `%COMMAND%` substitutions; the supported ones are compiled to
  small functions of the request context, any other one is a config error.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.http.headers import Headers
from proxy.proto_config import join

APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3


class FormatContext(Protocol):
    """What a `%COMMAND%` substitution may read about the request."""

    downstream_remote: tuple[str, int]
    downstream_local: tuple[str, int]
    request_headers: Headers


_Part = str | Callable[[FormatContext], str]

_COMMAND = re.compile(r"%([A-Z_0-9]+)(\(([^)]*)\))?%")


def _without_port(ctx: FormatContext) -> str:
    return ctx.downstream_remote[0]


def _with_port(ctx: FormatContext) -> str:
    host, port = ctx.downstream_remote
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _local_without_port(ctx: FormatContext) -> str:
    return ctx.downstream_local[0]


def _local_with_port(ctx: FormatContext) -> str:
    host, port = ctx.downstream_local
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _local_port(ctx: FormatContext) -> str:
    return str(ctx.downstream_local[1])


def _protocol(ctx: FormatContext) -> str:
    return "HTTP/1.1"


def _start_time(ctx: FormatContext) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


_HOSTNAME = socket.gethostname()

_SIMPLE_COMMANDS: dict[str, Callable[[FormatContext], str]] = {
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _without_port,
    "DOWNSTREAM_REMOTE_ADDRESS": _with_port,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _without_port,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _with_port,
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _local_without_port,
    "DOWNSTREAM_LOCAL_ADDRESS": _local_with_port,
    "DOWNSTREAM_LOCAL_PORT": _local_port,
    "PROTOCOL": _protocol,
    "START_TIME": _start_time,
    "HOSTNAME": lambda ctx: _HOSTNAME,
}


def _request_header(name: str) -> Callable[[FormatContext], str]:
    lowered = name.lower()

    def value(ctx: FormatContext) -> str:
        return ctx.request_headers.get_joined(lowered) or ""

    return value


def compile_value(text: str, path: str) -> tuple[_Part, ...]:
    """Split a header value into literal text and substitution functions."""
    parts: list[_Part] = []
    position = 0
    text = text.replace("%%", "\0")
    for match in _COMMAND.finditer(text):
        if match.start() > position:
            parts.append(text[position:match.start()].replace("\0", "%"))
        command, argument = match.group(1), match.group(3)
        if command in _SIMPLE_COMMANDS and argument is None:
            parts.append(_SIMPLE_COMMANDS[command])
        elif command == "REQ" and argument:
            parts.append(_request_header(argument.split("?")[0]))
        else:
            raise ConfigError(path, f"substitution %{command}% is not supported by tulle-proxy")
        position = match.end()
    if position < len(text):
        parts.append(text[position:].replace("\0", "%"))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class HeaderAddition:
    name: str
    parts: tuple[_Part, ...]
    action: int = APPEND_IF_EXISTS_OR_ADD
    keep_empty_value: bool = False

    def render(self, ctx: FormatContext) -> str:
        parts = self.parts
        if len(parts) == 1 and isinstance(parts[0], str):
            return parts[0]
        return "".join(part if isinstance(part, str) else part(ctx) for part in parts)


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """One level's removals and additions (route, virtual host or route configuration)."""

    remove: tuple[str, ...] = ()
    add: tuple[HeaderAddition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.add)

    def apply(self, headers: Headers, ctx: FormatContext) -> None:
        for name in self.remove:
            headers.remove(name)
        for addition in self.add:
            value = addition.render(ctx)
            if not value and not addition.keep_empty_value:
                continue
            action = addition.action
            if action == APPEND_IF_EXISTS_OR_ADD:
                headers.add(addition.name, value)
            elif action == OVERWRITE_IF_EXISTS_OR_ADD:
                headers.set(addition.name, value)
            elif addition.name in headers:
                if action == OVERWRITE_IF_EXISTS:
                    headers.set(addition.name, value)
            elif action == ADD_IF_ABSENT:
                headers.add(addition.name, value)


def header_additions(options: Sequence[Message], path: str) -> tuple[HeaderAddition, ...]:
    additions = []
    for index, option in enumerate(options):
        here = f"{path}[{index}]"
        reject_unsupported(option, here, ("header", "append", "append_action", "keep_empty_value"))
        header = option.header
        reject_unsupported(header, join(here, "header"), ("key", "value"))
        name = header.key.lower()
        if not name:
            raise ConfigError(join(here, "header.key"), "must not be empty")
        if name.startswith(":") or name == "host":
            raise ConfigError(join(here, "header.key"), "pseudo-headers and host cannot be added")
        action = option.append_action
        if option.HasField("append"):
            if option.append_action:
                raise ConfigError(join(here, "append"), "set either append or append_action")
            action = APPEND_IF_EXISTS_OR_ADD if option.append.value else OVERWRITE_IF_EXISTS_OR_ADD
        additions.append(HeaderAddition(
            name=name,
            parts=compile_value(header.value, join(here, "header.value")),
            action=action,
            keep_empty_value=option.keep_empty_value,
        ))
    return tuple(additions)


def header_mutation(adds: Sequence[Message], removes: Sequence[str], path: str,
                    add_field: str, remove_field: str) -> HeaderMutation:
    removals = tuple(name.lower() for name in removes)
    for index, name in enumerate(removals):
        if name.startswith(":") or name == "host":
            raise ConfigError(f"{join(path, remove_field)}[{index}]",
                              "pseudo-headers and host cannot be removed")
    return HeaderMutation(remove=removals, add=header_additions(adds, join(path, add_field)))


def static_rules(mutations: Sequence[HeaderMutation], owned: Callable[[str], bool]
                 ) -> tuple[set[str], list[tuple[str, str]]] | None:
    """Rules (levels in application order) as "drop these names, then append these lines",
    when that is what applying them does (the lines' order aside: an overwritten header
    moves to the end); None otherwise. That holds when every addition is a literal that
    appends or overwrites-or-adds, no name is touched twice across levels or overwritten
    twice in one, and no rule touches a name `owned` says the caller sets itself."""
    drop: set[str] = set()
    lines: list[tuple[str, str]] = []
    touched: set[str] = set()
    for level in mutations:
        for name in level.remove:
            if owned(name) or name in touched:
                return None
            touched.add(name)
            drop.add(name)
        level_names: set[str] = set()
        for addition in level.add:
            name = addition.name
            if owned(name) or name in touched or not all(isinstance(part, str) for part in addition.parts):
                return None
            value = "".join(addition.parts)   # type: ignore[arg-type]
            level_names.add(name)
            if not value and not addition.keep_empty_value:
                continue
            if addition.action == OVERWRITE_IF_EXISTS_OR_ADD:
                if sum(1 for other in level.add if other.name == name) > 1:
                    return None   # a second overwrite in the level would drop the first
                drop.add(name)
            elif addition.action != APPEND_IF_EXISTS_OR_ADD:
                return None
            lines.append((name, value))
        touched |= level_names
    return drop, lines
