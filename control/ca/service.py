"""The CSR-signing gRPC API (`tulle.security.v1.CertificateService`), a thin shell over
`attestation.identity_for` and `CertificateAuthority.issue`.

The request names the node the calling agent acts for. Over the control plane's
root-only unix socket that claim is trusted (only root on this machine can connect);
over the network the channel's client certificate must prove the same node, which
`node_of_channel` checks when given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from control.ca.attestation import NotAuthorized, identity_for
from control.ca.authority import DEFAULT_TTL, CertificateAuthority, CsrRejected
from proto.tulle.security.v1 import ca_pb2, ca_pb2_grpc

PodLookup = Callable[[str, str], Mapping[str, Any] | None]
Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateService(ca_pb2_grpc.CertificateServiceServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        pods: PodLookup,
        max_ttl: dt.timedelta = DEFAULT_TTL,
        clock: Clock = _utc_now,
        node_of_channel: Callable[[grpc.ServicerContext], str | None] | None = None,
    ) -> None:
        self._ca = ca
        self._pods = pods
        self._max_ttl = max_ttl
        self._clock = clock
        self._node_of_channel = node_of_channel

    def CreateCertificate(
        self, request: ca_pb2.CertificateRequest, context: grpc.ServicerContext
    ) -> ca_pb2.CertificateResponse:
        pod_ref = f"{request.pod_namespace}/{request.pod_name}"
        if self._node_of_channel is not None:
            proven = self._node_of_channel(context)
            if proven != request.node:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"channel authenticates node {proven!r}, request claims {request.node!r}",
                )
        try:
            identity = identity_for(
                self._pods(request.pod_namespace, request.pod_name), request.node, pod_ref,
                self._ca.trust_domain,
            )
        except NotAuthorized as error:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        ttl = self._max_ttl
        if request.validity_duration > 0:
            ttl = min(ttl, dt.timedelta(seconds=request.validity_duration))
        try:
            issued = self._ca.issue(request.csr.encode(), identity, self._clock(), ttl)
        except CsrRejected as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"CSR for {pod_ref} rejected: {error}")
        chain = issued.chain_pem().decode()
        return ca_pb2.CertificateResponse(
            cert_chain=_split_pem(chain),
            trust_bundle=self._ca.trust_bundle_pem().decode(),
            identity=str(identity),
        )


def _split_pem(bundle: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + end + "\n" for part in bundle.split(end) if part.strip()]
