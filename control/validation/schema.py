"""A small schema language for Kubernetes-shaped documents, and its checker.

Theory of operation: every kind's shape is written as data — nested `Obj`, `ListOf`,
`MapOf` and leaf nodes — in `kubernetes.py` and `istio.py`. `Node.check(value, path,
errors)` walks a document against its schema and appends a `FieldError` for every
problem it finds; it never stops at the first, so a user sees everything wrong with a
document at once, as `kubectl apply` shows it.

Rules:
- An `Obj` rejects fields it does not declare (`Unknown field`): a typo in a policy
  must not silently become a policy that allows more than intended.
- `Opaque` marks a field Tulle stores but does not interpret (a Pod's volumes, a
  container's probes): any JSON is accepted there, unchanged.
- A node checks its own type first; a wrong type is one error and its children are
  not checked further.
- Cross-field rules (endPort ≥ port, one of exact/prefix/regex, except ⊂ cidr) are
  plain functions attached to an `Obj` as `rules`; they run after the fields pass
  their own checks, and see only well-typed fields.
- Error messages follow Kubernetes' `field.Error`: `<path>: <Type>: <value>: <detail>`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from netpolicy.labels import LabelSelector, SelectorError, check_labels


class ErrorType(Enum):
    INVALID = "Invalid value"
    REQUIRED = "Required value"
    UNSUPPORTED = "Unsupported value"
    FORBIDDEN = "Forbidden"
    DUPLICATE = "Duplicate value"
    NOT_FOUND = "Not found"
    TOO_MANY = "Too many"
    UNKNOWN_FIELD = "Unknown field"


@dataclass(frozen=True, slots=True)
class FieldError:
    type: ErrorType
    path: str
    detail: str = ""
    value: Any = None
    has_value: bool = False

    def __str__(self) -> str:
        parts = [f"{self.path}: {self.type.value}"]
        if self.has_value:
            parts.append(render_value(self.value))
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)


def render_value(value: Any) -> str:
    """Go's %q for strings, plain numbers, compact JSON for the rest (as Kubernetes does)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(ErrorType.INVALID, path, detail, value, True)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(ErrorType.REQUIRED, path, detail)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError(ErrorType.FORBIDDEN, path, detail)


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError(ErrorType.DUPLICATE, path, "", value, True)


def unsupported(path: str, value: Any, supported: Iterable[str]) -> FieldError:
    listed = ", ".join(json.dumps(s) for s in supported)
    return FieldError(ErrorType.UNSUPPORTED, path, f"supported values: {listed}", value, True)


Errors = list[FieldError]

_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", bool: "boolean"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return "number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def wrong_type(path: str, value: Any, expected: str) -> FieldError:
    return invalid(path, value, f"must be of type {expected}, not {_type_name(value)}")


class Node:
    """One position in a schema. Subclasses check a value found at `path`."""

    def check(self, value: Any, path: str, errors: Errors) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Opaque(Node):
    """Stored as given, not interpreted by Tulle."""

    def check(self, value: Any, path: str, errors: Errors) -> None:
        return


@dataclass(frozen=True)
class Bool(Node):
    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, bool):
            errors.append(wrong_type(path, value, "boolean"))


@dataclass(frozen=True)
class Int(Node):
    lo: int | None = None
    hi: int | None = None

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(wrong_type(path, value, "integer"))
        elif self.lo is not None and self.hi is not None and not self.lo <= value <= self.hi:
            errors.append(invalid(path, value, f"must be between {self.lo} and {self.hi}, inclusive"))
        elif self.lo is not None and value < self.lo:
            errors.append(invalid(path, value, f"must be greater than or equal to {self.lo}"))
        elif self.hi is not None and value > self.hi:
            errors.append(invalid(path, value, f"must be less than or equal to {self.hi}"))


@dataclass(frozen=True)
class Num(Node):
    """A JSON number (Istio's percentages are doubles)."""

    lo: float
    hi: float

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(wrong_type(path, value, "number"))
        elif not self.lo <= value <= self.hi:
            errors.append(invalid(path, value, f"must be between {self.lo:g} and {self.hi:g}, inclusive"))


@dataclass(frozen=True)
class Str(Node):
    pattern: re.Pattern[str] | None = None
    explain: str = ""
    max_len: int | None = None
    non_empty: bool = False

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, str):
            errors.append(wrong_type(path, value, "string"))
        elif self.non_empty and not value:
            errors.append(required(path))
        elif self.max_len is not None and len(value) > self.max_len:
            errors.append(invalid(path, value, f"must be no more than {self.max_len} characters"))
        elif self.pattern is not None and not self.pattern.fullmatch(value):
            errors.append(invalid(path, value, self.explain))


@dataclass(frozen=True)
class Enum_(Node):
    values: tuple[str, ...]

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, str):
            errors.append(wrong_type(path, value, "string"))
        elif value not in self.values:
            errors.append(unsupported(path, value, self.values))


def OneOf(*values: str) -> Enum_:
    return Enum_(values)


@dataclass(frozen=True)
class Checked(Node):
    """A string checked by a function that returns a reason, or None when valid."""

    reason: Callable[[str], str | None]

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, str):
            errors.append(wrong_type(path, value, "string"))
        elif (why := self.reason(value)) is not None:
            errors.append(invalid(path, value, why))


@dataclass(frozen=True)
class IntOrStr(Node):
    """Kubernetes' IntOrString: a number checked by `number`, or a string by `name`."""

    number: Node
    name: Node

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if isinstance(value, str):
            self.name.check(value, path, errors)
        elif isinstance(value, int) and not isinstance(value, bool):
            self.number.check(value, path, errors)
        else:
            errors.append(wrong_type(path, value, "integer or string"))


@dataclass(frozen=True)
class ListOf(Node):
    item: Node
    min_items: int = 0
    max_items: int | None = None
    unique: bool = False

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, list):
            errors.append(wrong_type(path, value, "array"))
            return
        if len(value) < self.min_items:
            errors.append(required(path, f"must have at least {self.min_items} item{'s' * (self.min_items > 1)}"))
        if self.max_items is not None and len(value) > self.max_items:
            errors.append(FieldError(ErrorType.TOO_MANY, path, f"must have at most {self.max_items} items", len(value), True))
        seen: list[Any] = []
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]", errors)
            if self.unique:
                if item in seen:
                    errors.append(duplicate(f"{path}[{i}]", item))
                seen.append(item)


@dataclass(frozen=True)
class MapOf(Node):
    value: Node
    key: Node = field(default_factory=lambda: Str())

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, Mapping):
            errors.append(wrong_type(path, value, "object"))
            return
        for k, v in value.items():
            self.key.check(k, f"{path}[{k}]", errors)
            self.value.check(v, f"{path}[{k}]", errors)


@dataclass(frozen=True)
class Labels(Node):
    """A map of Kubernetes labels (keys and values checked as the API does)."""

    def check(self, value: Any, path: str, errors: Errors) -> None:
        try:
            check_labels(value, path)
        except SelectorError as e:
            errors.append(invalid(e.path or path, _at(value, path, e.path), e.reason))


@dataclass(frozen=True)
class Selector(Node):
    """A `metav1.LabelSelector` (matchLabels, matchExpressions)."""

    def check(self, value: Any, path: str, errors: Errors) -> None:
        try:
            LabelSelector.from_dict(value, path)
        except SelectorError as e:
            if e.reason == "unknown field":
                errors.append(FieldError(ErrorType.UNKNOWN_FIELD, e.path))
            else:
                errors.append(invalid(e.path or path, _at(value, path, e.path), e.reason))


def _at(document: Any, base: str, path: str) -> Any:
    """The value at `path` below `base` in `document`, for error messages; None if absent."""
    rest = path[len(base):] if path.startswith(base) else ""
    for step in re.findall(r"\.([^.\[]+)|\[(\d+)\]", rest):
        key, index = step
        if key and isinstance(document, Mapping):
            document = document.get(key)
        elif index and isinstance(document, list) and int(index) < len(document):
            document = document[int(index)]
        else:
            return None
    return document


Rule = Callable[[Mapping[str, Any], str, Errors], None]


@dataclass(frozen=True)
class Obj(Node):
    """An object with declared fields; `rules` check relations between fields."""

    fields: Mapping[str, Node]
    required: tuple[str, ...] = ()
    # Groups of fields of which at most one may be set.
    exclusive: tuple[tuple[str, ...], ...] = ()
    # Groups of fields of which exactly one must be set.
    exactly_one: tuple[tuple[str, ...], ...] = ()
    checks: tuple[Rule, ...] = ()

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, Mapping):
            errors.append(wrong_type(path, value, "object"))
            return
        before = len(errors)
        for name, child in value.items():
            where = f"{path}.{name}" if path else str(name)
            schema = self.fields.get(name)
            if schema is None:
                errors.append(FieldError(ErrorType.UNKNOWN_FIELD, where))
            elif child is not None:
                schema.check(child, where, errors)
        present = {k for k, v in value.items() if v is not None}
        for name in self.required:
            if name not in present:
                errors.append(required(f"{path}.{name}" if path else name))
        for group in self.exclusive:
            if len(set(group) & present) > 1:
                errors.append(forbidden(path or ".", f"may not specify more than one of {', '.join(group)}"))
        for group in self.exactly_one:
            count = len(set(group) & present)
            if count == 0:
                errors.append(required(path or ".", f"must specify one of {', '.join(group)}"))
            elif count > 1:
                errors.append(forbidden(path or ".", f"may not specify more than one of {', '.join(group)}"))
        if len(errors) == before:
            for rule in self.checks:
                rule(value, path, errors)


def obj(required: Any = (), exclusive: Any = (), exactly_one: Any = (), checks: Any = (),
        **fields: Node) -> Obj:
    """`Obj` with its fields as keyword arguments, the compact form the tables use.

    (The four structural arguments are typed Any only because tables splat dicts of
    fields into this call, which mypy cannot tell apart from them.)"""
    return Obj(fields, tuple(required), tuple(exclusive), tuple(exactly_one), tuple(checks))


# --- leaves shared by many kinds -------------------------------------------------------

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

LABEL_NAME = Str(
    DNS1123_LABEL,
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')",
    max_len=63,
)
SUBDOMAIN_NAME = Str(
    DNS1123_SUBDOMAIN,
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com')",
    max_len=253,
)


def port_name_reason(name: str) -> str | None:
    """IANA_SVC_NAME, the rule for named ports (`http`, `grpc-web`)."""
    if not 1 <= len(name) <= 15:
        return "must be no more than 15 characters"
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        return "must contain only lowercase alphanumeric characters and '-', starting and ending with an alphanumeric"
    if "--" in name:
        return "must not contain consecutive hyphens"
    if not re.search(r"[a-z]", name):
        return "must contain at least one letter (a-z)"
    return None


PORT = Int(1, 65535)
PORT_NAME = Checked(port_name_reason)
PROTOCOL = OneOf("TCP", "UDP", "SCTP")


def cidr_reason(text: str) -> str | None:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"must be a valid CIDR (e.g. 10.0.0.0/8 or fd00::/8): {e}"
        return f"must be a valid CIDR with no host bits set (did you mean {loose}?)"
    return None


def ip_reason(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return "must be a valid IP address (e.g. 10.9.8.7 or 2001:db8::ffff)"
    return None


def ip_or_cidr_reason(text: str) -> str | None:
    return ip_reason(text) if "/" not in text else cidr_reason(text)


CIDR = Checked(cidr_reason)
IP = Checked(ip_reason)
IP_OR_CIDR = Checked(ip_or_cidr_reason)

_DURATION = re.compile(r"(\d+(\.\d+)?(h|m|s|ms|us|µs|ns))+")


def duration_reason(text: str) -> str | None:
    """protobuf Duration as Istio writes it: `1s`, `0.5s`, `100ms`, `1h30m`."""
    if not _DURATION.fullmatch(text):
        return "must be a duration such as 10s, 0.5s, 250ms or 1h30m"
    return None


DURATION = Checked(duration_reason)
