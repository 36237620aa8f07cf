"""Kubernetes labels and label selectors: validation, parsing and matching.

Rules (the Kubernetes API's, `apimachinery/pkg/labels` and `metav1.LabelSelector`):
- A label key is an optional DNS-subdomain prefix (≤ 253 chars) and `/`, then a name of
  ≤ 63 chars: alphanumerics with `-`, `_`, `.` inside. A value is empty or such a name.
- A selector is the AND of its requirements. `matchLabels: {k: v}` is `k In (v)`.
  `In` needs the label present with one of the values; `NotIn` holds when the label is
  absent or has another value; `Exists` / `DoesNotExist` test presence only.
  `In`/`NotIn` need at least one value; `Exists`/`DoesNotExist` take none.
- The empty selector (`{}`, or the empty string on a command line) selects everything.
  Whether an *absent* selector selects nothing or everything depends on the API field,
  so callers decide that; this module only ever sees a selector that is present.
- The string form is kubectl's `-l`: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
  `k notin (a,b)`, `k`, `!k`, joined by commas.

Selectors are parsed once into immutable `LabelSelector`s; `matches` is a loop over a
few requirements, since it runs for every (pod, policy) pair.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SelectorError(ValueError):
    """A label, selector or selector string that the Kubernetes API would reject."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def check_label_key(key: object, path: str) -> str:
    if not isinstance(key, str):
        raise SelectorError(path, f"label key must be a string, not {type(key).__name__}")
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise SelectorError(path, f"invalid label key {key!r}: prefix must be a DNS subdomain")
    if not _NAME.match(name):
        raise SelectorError(
            path,
            f"invalid label key {key!r}: name part must be 1-63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        )
    return key


def check_label_value(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise SelectorError(path, f"label value must be a string, not {type(value).__name__}")
    if value and not _NAME.match(value):
        raise SelectorError(
            path,
            f"invalid label value {value!r}: must be empty or 1-63 alphanumerics, '-', '_' or "
            "'.', starting and ending with an alphanumeric",
        )
    return value


def check_labels(labels: object, path: str) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise SelectorError(path, f"must be a map of strings, not {type(labels).__name__}")
    return {
        check_label_key(k, f"{path}.{k}"): check_label_value(v, f"{path}.{k}")
        for k, v in labels.items()
    }


class Operator(Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op is Operator.IN:
            return labels.get(self.key) in self.values
        if op is Operator.NOT_IN:
            value = labels.get(self.key)
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if len(self.values) == 1:
            (value,) = self.values
            return f"{self.key}{'=' if op is Operator.IN else '!='}{value}"
        word = "in" if op is Operator.IN else "notin"
        return f"{self.key} {word} ({','.join(sorted(self.values))})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """The AND of requirements; no requirements selects everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def selects_everything(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    @classmethod
    def from_dict(cls, selector: object, path: str = "") -> LabelSelector:
        """From a `metav1.LabelSelector` document; errors name the field's path."""
        if selector is None:
            return cls()
        if not isinstance(selector, Mapping):
            raise SelectorError(path, f"must be an object, not {type(selector).__name__}")
        unknown = set(selector) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise SelectorError(f"{path}.{sorted(unknown)[0]}", "unknown field")
        requirements: list[Requirement] = [
            Requirement(key, Operator.IN, frozenset((value,)))
            for key, value in check_labels(selector.get("matchLabels"), f"{path}.matchLabels").items()
        ]
        expressions = selector.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise SelectorError(f"{path}.matchExpressions", "must be a list")
        for i, expression in enumerate(expressions):
            requirements.append(_expression(expression, f"{path}.matchExpressions[{i}]"))
        return cls(tuple(requirements))

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """From kubectl's `-l` string form."""
        return cls(tuple(_parse_requirement(part) for part in _split_top_level(text)))


def _expression(expression: Any, path: str) -> Requirement:
    if not isinstance(expression, Mapping):
        raise SelectorError(path, "must be an object")
    unknown = set(expression) - {"key", "operator", "values"}
    if unknown:
        raise SelectorError(f"{path}.{sorted(unknown)[0]}", "unknown field")
    key = check_label_key(expression.get("key"), f"{path}.key")
    try:
        operator = Operator(expression.get("operator"))
    except ValueError:
        raise SelectorError(
            f"{path}.operator",
            f"unsupported value {expression.get('operator')!r}: must be In, NotIn, Exists or DoesNotExist",
        ) from None
    values = expression.get("values") or []
    if not isinstance(values, list):
        raise SelectorError(f"{path}.values", "must be a list of strings")
    checked = [check_label_value(v, f"{path}.values[{i}]") for i, v in enumerate(values)]
    if operator in (Operator.IN, Operator.NOT_IN) and not checked:
        raise SelectorError(f"{path}.values", f"must be non-empty when operator is {operator.value}")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and checked:
        raise SelectorError(f"{path}.values", f"may not be specified when operator is {operator.value}")
    return Requirement(key, operator, frozenset(checked))


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_SET_FORM = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQUALITY_FORM = re.compile(r"^(?P<key>[^\s!=()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=()]*)$")


def _parse_requirement(part: str) -> Requirement:
    where = f"selector {part!r}"
    if match := _SET_FORM.match(part):
        key = check_label_key(match["key"], where)
        values = [v.strip() for v in match["values"].split(",") if v.strip()]
        if not values:
            raise SelectorError(where, f"'{match['op']}' needs at least one value")
        operator = Operator.IN if match["op"] == "in" else Operator.NOT_IN
        return Requirement(key, operator, frozenset(check_label_value(v, where) for v in values))
    if match := _EQUALITY_FORM.match(part):
        key = check_label_key(match["key"], where)
        operator = Operator.NOT_IN if match["op"] == "!=" else Operator.IN
        return Requirement(key, operator, frozenset((check_label_value(match["value"], where),)))
    if part.startswith("!"):
        return Requirement(check_label_key(part[1:].strip(), where), Operator.DOES_NOT_EXIST)
    return Requirement(check_label_key(part, where), Operator.EXISTS)
