"""The CSR-signing gRPC API (`tulle.security.v1.CertificateService`), a thin shell over
`attestation.identity_for` and `CertificateAuthority.issue`.

The request names the node the calling agent acts for. Over the control plane's
root-only unix socket that claim is trusted (only root on this machine can connect);
over the network the channel's client certificate must prove the same node, which
`node_of_channel` checks when given (`agent_node_of_channel`: the node of a
`spiffe://<td>/ns/tulle-system/sa/tulle-agent.<node>` client certificate; a plaintext
TCP client proves no node, so it obtains nothing).

An agent also renews its own control-plane client certificate here (`node_agent`): only
over mTLS with its current agent certificate, for the node that certificate names, and
for no longer than that certificate lived (`sign_agent`), so renewal never lengthens what
the operator issued with `tulle-control issue-cert --kind agent --ttl`.

`sign` and `sign_agent` are the whole decision, free of I/O; `CertificateService` (threaded gRPC, a
lookup function) and `AsyncCertificateService` (grpc.aio inside tulle-control, pods read
from the registry) are the two shells around it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from cryptography import x509

from control.ca.attestation import NotAuthorized, identity_for
from control.ca.authority import CLOCK_SKEW, DEFAULT_TTL, CertificateAuthority, CsrRejected
from control.ca.spiffe import agent_identity
from control.caller import Role, caller_of
from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc

PodLookup = Callable[[str, str], Mapping[str, Any] | None]
AsyncPodLookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
Clock = Callable[[], dt.datetime]
NodeOfChannel = Callable[[Any], str | None]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Refused(Exception):
    """A request the CA will not answer with a certificate: the gRPC status and why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def sign(
    ca: CertificateAuthority,
    request: ca_pb2.CertificateRequest,
    pod: Mapping[str, Any] | None,
    now: dt.datetime,
    max_ttl: dt.timedelta,
    proven_node: str | None = None,
) -> ca_pb2.CertificateResponse:
    """The answer to `request`, given the pod it names (None if none) and, over an
    authenticated network channel, the node the client certificate proves."""
    pod_ref = f"{request.pod_namespace}/{request.pod_name}"
    if proven_node is not None and proven_node != request.node:
        raise Refused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"channel authenticates node {proven_node!r}, request claims {request.node!r}",
        )
    try:
        identity = identity_for(pod, request.node, pod_ref, ca.trust_domain)
    except NotAuthorized as error:
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, str(error)) from None
    ttl = max_ttl
    if request.validity_duration > 0:
        ttl = min(ttl, dt.timedelta(seconds=request.validity_duration))
    try:
        issued = ca.issue(request.csr.encode(), identity, now, ttl)
    except CsrRejected as error:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"CSR for {pod_ref} rejected: {error}") from None
    return ca_pb2.CertificateResponse(
        cert_chain=_split_pem(issued.chain_pem().decode()),
        trust_bundle=ca.trust_bundle_pem().decode(),
        identity=str(identity),
    )


def sign_agent(
    ca: CertificateAuthority,
    request: ca_pb2.CertificateRequest,
    now: dt.datetime,
    proven_node: str | None,
    presented: x509.Certificate | None,
) -> ca_pb2.CertificateResponse:
    """The answer to an agent asking for its own certificate anew, given the node its
    channel's certificate proves and that certificate."""
    if request.pod_namespace or request.pod_name:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a node_agent request names no pod")
    if not proven_node or proven_node != request.node or presented is None:
        raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                      f"only the agent of node {request.node!r}, presenting its current agent certificate "
                      "over mTLS, may renew it")
    ttl = presented.not_valid_after_utc - presented.not_valid_before_utc - CLOCK_SKEW
    if request.validity_duration > 0:
        ttl = min(ttl, dt.timedelta(seconds=request.validity_duration))
    if ttl <= dt.timedelta(0):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the requested lifetime is not positive")
    identity = agent_identity(ca.trust_domain, request.node)
    try:
        issued = ca.issue(request.csr.encode(), identity, now, ttl)
    except CsrRejected as error:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"CSR of the agent of {request.node!r} rejected: {error}") from None
    return ca_pb2.CertificateResponse(cert_chain=_split_pem(issued.chain_pem().decode()),
                                      trust_bundle=ca.trust_bundle_pem().decode(), identity=str(identity))


def presented_certificate(context: Any) -> x509.Certificate | None:
    """The client certificate of the request's mTLS channel (None without one)."""
    pem = context.auth_context().get("x509_pem_cert")
    return x509.load_pem_x509_certificate(pem[0]) if pem else None


class CertificateService(ca_pb2_grpc.CertificateServiceServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        pods: PodLookup,
        max_ttl: dt.timedelta = DEFAULT_TTL,
        clock: Clock = _utc_now,
        node_of_channel: NodeOfChannel | None = None,
    ) -> None:
        self._ca = ca
        self._pods = pods
        self._max_ttl = max_ttl
        self._clock = clock
        self._node_of_channel = node_of_channel

    def CreateCertificate(
        self, request: ca_pb2.CertificateRequest, context: grpc.ServicerContext
    ) -> ca_pb2.CertificateResponse:
        proven = self._node_of_channel(context) if self._node_of_channel is not None else None
        try:
            if request.node_agent:
                return sign_agent(self._ca, request, self._clock(), proven, presented_certificate(context))
            return sign(self._ca, request, self._pods(request.pod_namespace, request.pod_name),
                        self._clock(), self._max_ttl, proven)
        except Refused as refused:
            context.abort(refused.code, str(refused))
            raise  # abort raises; this line is for the type checker


class AsyncCertificateService(ca_pb2_grpc.CertificateServiceServicer):
    """The same API on a grpc.aio server: the pod is read from the store per request, so
    a pod created a millisecond ago is already known."""

    def __init__(
        self,
        ca: CertificateAuthority,
        pods: AsyncPodLookup,
        max_ttl: dt.timedelta = DEFAULT_TTL,
        clock: Clock = _utc_now,
        node_of_channel: NodeOfChannel | None = None,
    ) -> None:
        self._ca = ca
        self._pods = pods
        self._max_ttl = max_ttl
        self._clock = clock
        self._node_of_channel = node_of_channel

    async def CreateCertificate(
        self, request: ca_pb2.CertificateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ca_pb2.CertificateResponse:
        proven = self._node_of_channel(context) if self._node_of_channel is not None else None
        try:
            if request.node_agent:
                return sign_agent(self._ca, request, self._clock(), proven, presented_certificate(context))
            pod = await self._pods(request.pod_namespace, request.pod_name)
            return sign(self._ca, request, pod, self._clock(), self._max_ttl, proven)
        except Refused as refused:
            await context.abort(refused.code, str(refused))
            raise  # abort raises; this line is for the type checker


def agent_node_of_channel(trust_domain: str) -> NodeOfChannel:
    """The node a request may act for, read from its channel (`control.caller`): None —
    whichever node it names — over the root-only unix socket; the node of the agent
    certificate on an mTLS connection; "" for anyone else (plaintext TCP, a workload's or
    an operator's certificate), which no request can claim, so they are all refused."""

    def node(context: Any) -> str | None:
        caller = caller_of(context, trust_domain)
        if caller.role is Role.LOCAL:
            return None
        return caller.name if caller.role is Role.AGENT else ""

    return node


def _split_pem(bundle: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + end + "\n" for part in bundle.split(end) if part.strip()]
