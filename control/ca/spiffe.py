"""SPIFFE IDs of Tulle workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

Rules (the SPIFFE ID spec, narrowed to Istio's path shape):
- The trust domain is lowercase letters, digits, `.`, `-` and `_`, at most 255 chars.
- The path is exactly `/ns/<namespace>/sa/<service-account>`; both are Kubernetes
  names (DNS labels for namespaces, DNS subdomains for service accounts).
- No query, fragment, port or userinfo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ID = re.compile(r"^spiffe://(?P<td>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


class InvalidSpiffeId(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain):
            raise InvalidSpiffeId(f"invalid trust domain {self.trust_domain!r}")
        if not _DNS_LABEL.match(self.namespace):
            raise InvalidSpiffeId(f"invalid namespace {self.namespace!r}")
        if not _DNS_SUBDOMAIN.match(self.service_account):
            raise InvalidSpiffeId(f"invalid service account {self.service_account!r}")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        match = _ID.match(uri)
        if not match:
            raise InvalidSpiffeId(f"{uri!r} is not spiffe://<trust-domain>/ns/<ns>/sa/<sa>")
        return cls(match["td"], match["ns"], match["sa"])


# Identities of Tulle's own components and operators, in the namespace no workload may
# use (attestation refuses it): the service account says which component, and for whom.
SYSTEM_NAMESPACE = "tulle-system"
CONTROL_PLANE_ACCOUNT = "tulle-control"
AGENT_PREFIX = "tulle-agent."
OPERATOR_PREFIX = "tulle-operator."


def control_plane_identity(trust_domain: str) -> SpiffeId:
    return SpiffeId(trust_domain, SYSTEM_NAMESPACE, CONTROL_PLANE_ACCOUNT)


def agent_identity(trust_domain: str, node: str) -> SpiffeId:
    """The identity of the tulle-agent of `node`: what its client certificate proves."""
    return SpiffeId(trust_domain, SYSTEM_NAMESPACE, f"{AGENT_PREFIX}{node}")


def operator_identity(trust_domain: str, name: str) -> SpiffeId:
    """The identity of an operator (a person or a CI job using meshctl) called `name`."""
    return SpiffeId(trust_domain, SYSTEM_NAMESPACE, f"{OPERATOR_PREFIX}{name}")
