"""Validation at the edge: every document is checked against its kind's schema before
anything is stored.

`validate(document)` returns the document's `Kind` or raises `InvalidObjectError`,
whose message is kubectl's:

    The NetworkPolicy "x" is invalid: spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive

with one `* <error>` line per problem when there are several. A document that is not
even an object of a known kind raises `InvalidObjectError` with no kind/name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control import resources
from control.resources import Kind
from control.validation import istio, kubernetes
from control.validation.schema import (
    LABEL_NAME,
    SUBDOMAIN_NAME,
    FieldError,
    Int,
    Labels,
    ListOf,
    MapOf,
    Node,
    Obj,
    Opaque,
    Str,
    invalid,
    obj,
    required,
    unsupported,
    wrong_type,
)

BODIES: dict[str, dict[str, Node]] = {**kubernetes.BODIES, **istio.BODIES}
SPEC_REQUIRED = kubernetes.SPEC_REQUIRED | istio.SPEC_REQUIRED
assert set(BODIES) == set(resources.BY_NAME), "every stored kind has a schema"

# Names that are DNS labels (they become DNS names or are used in other objects' names);
# everything else is a DNS subdomain.
_LABEL_NAMED = frozenset({"Namespace", "Service"})



def _metadata(name: Node) -> Obj:
    return obj(
        required=["name"],
        name=name,
        namespace=LABEL_NAME,
        labels=Labels(),
        annotations=MapOf(Str()),
        uid=Str(),
        resourceVersion=Str(),
        creationTimestamp=Opaque(),
        generation=Int(0),
        ownerReferences=ListOf(Opaque()),
        finalizers=ListOf(Str()),
        managedFields=Opaque(),
        deletionTimestamp=Opaque(),
        deletionGracePeriodSeconds=Opaque(),
    )


_SCHEMAS: dict[str, Obj] = {
    kind: obj(
        required=["apiVersion", "kind", "metadata", *(["spec"] if kind in SPEC_REQUIRED else [])],
        apiVersion=Str(),
        kind=Str(),
        metadata=_metadata(LABEL_NAME if kind in _LABEL_NAMED else SUBDOMAIN_NAME),
        **body,
    )
    for kind, body in BODIES.items()
}


class InvalidObjectError(ValueError):
    """A document the API rejects; `errors` name each field and reason."""

    def __init__(self, kind: str, name: str, errors: list[FieldError] | list[str]) -> None:
        self.kind = kind
        self.name = name
        self.errors = [str(e) for e in errors]
        subject = f'The {kind} "{name}" is invalid' if kind else "The document is invalid"
        if len(self.errors) == 1:
            message = f"{subject}: {self.errors[0]}"
        else:
            message = f"{subject}: \n" + "\n".join(f"* {e}" for e in self.errors)
        super().__init__(message)


def validate(document: Any) -> Kind:
    """The kind of a valid document; `InvalidObjectError` naming every problem otherwise."""
    if not isinstance(document, Mapping):
        raise InvalidObjectError("", "", [wrong_type("<document>", document, "object")])
    kind_name = document.get("kind")
    api_version = document.get("apiVersion")
    metadata = document.get("metadata")
    name = metadata.get("name", "") if isinstance(metadata, Mapping) else ""
    name = name if isinstance(name, str) else ""
    problems: list[FieldError] = []
    if not isinstance(api_version, str) or not api_version:
        problems.append(required("apiVersion"))
    if not isinstance(kind_name, str) or not kind_name:
        problems.append(required("kind"))
    elif kind_name not in resources.BY_NAME:
        problems.append(unsupported("kind", kind_name, list(resources.BY_NAME)))
    if problems:
        raise InvalidObjectError(kind_name if isinstance(kind_name, str) else "", name, problems)
    kind = resources.BY_NAME[str(kind_name)]
    if api_version != kind.api_version:
        problems.append(unsupported("apiVersion", api_version, [kind.api_version]))
    _SCHEMAS[kind.name].check(document, "", problems)
    if kind.name == "BaselineAdminNetworkPolicy" and name and name != "default":
        problems.append(invalid("metadata.name", name, 'a BaselineAdminNetworkPolicy must be named "default"'))
    if problems:
        raise InvalidObjectError(kind.name, name, problems)
    return kind


__all__ = ["FieldError", "InvalidObjectError", "validate"]
