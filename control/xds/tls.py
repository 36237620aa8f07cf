"""TLS transport sockets of a sidecar, with certificates delivered over SDS.

Contract with the proxies (Envoy or tulle-proxy), Istio's exactly:
- Secrets come from the node agent's SDS server on a unix socket, not from tulle-control:
  the workload's key is generated on its node and never leaves it. Every SDS reference
  is `sds_config.api_config_source` (GRPC, v3, `envoy_grpc.cluster_name: sds-grpc`); the
  bootstrap defines the static cluster `sds-grpc` (HTTP/2, a pipe to the agent's socket,
  /var/run/tulle/sds/socket inside the pod).
- Secret `default`: the workload's `tls_certificate` (its SVID chain and key).
  Secret `ROOTCA`: a `validation_context` with the trust bundle.
- Inbound (DownstreamTlsContext): the client must present a certificate (mTLS) chaining
  to ROOTCA; TLS 1.2 to 1.3; ALPN h2 and http/1.1. The peer's SPIFFE ID is what RBAC
  principals match (no SAN restriction at the TLS layer: any identity of the trust
  domain may connect, AuthorizationPolicy decides what it may do).
- Outbound (UpstreamTlsContext): the same secrets, plus `match_typed_subject_alt_names`
  (URI) with the SPIFFE IDs of the destination's service accounts, so a sidecar talks
  only to the workloads behind the service it meant; SNI
  `outbound_.<port>_.<subset>_.<host>` (Istio's).
- TLS origination (a DestinationRule's `trafficPolicy.tls` SIMPLE or MUTUAL, Istio's
  ClientTLSSettings): files on the proxy's host, not SDS — `caCertificates` (default: the
  system bundle) verifies the server, `subjectAltNames` restrict it (`spiffe://…` as URI
  SANs, anything else as DNS), `insecureSkipVerify` turns verification off, `caCrl` adds
  a CRL; MUTUAL also presents `clientCertificate`/`privateKey`. SNI: `sni`, else the
  service's host name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

SDS_CLUSTER: Final = "sds-grpc"
SDS_SOCKET: Final = "/var/run/tulle/sds/socket"
CERTIFICATE_SECRET: Final = "default"
ROOT_SECRET: Final = "ROOTCA"
ALPN: Final = ("h2", "http/1.1")
SYSTEM_CA_BUNDLE: Final = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, what Istio's proxies use
TLS_TRANSPORT: Final = "envoy.transport_sockets.tls"


def sds_config() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.V3,
            set_node_on_first_message_only=True,
            grpc_services=[grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER))],
        ),
        resource_api_version=config_source_pb2.V3,
        # Istio's: never block listener warming on a secret; the connection fails instead.
        initial_fetch_timeout=duration_pb2.Duration(),
    )


def _common(alpn: Iterable[str], sans: Iterable[str] = ()) -> tls_pb2.CommonTlsContext:
    validation = common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=[
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(exact=san))
            for san in sans
        ]
    )
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
            tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        ),
        alpn_protocols=list(alpn),
        tls_certificate_sds_secret_configs=[
            secret_pb2.SdsSecretConfig(name=CERTIFICATE_SECRET, sds_config=sds_config())],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=validation,
            validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name=ROOT_SECRET, sds_config=sds_config()),
        ),
    )


def downstream_socket() -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(ALPN), require_client_certificate=wrappers_pb2.BoolValue(value=True)
    )
    socket = base_pb2.TransportSocket(name=TLS_TRANSPORT)
    socket.typed_config.Pack(context)
    return socket


def upstream_socket(sans: Iterable[str], sni: str, http2: bool) -> base_pb2.TransportSocket:
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=_common(("h2",) if http2 else ("http/1.1",), sorted(set(sans))), sni=sni
    )
    socket = base_pb2.TransportSocket(name=TLS_TRANSPORT)
    socket.typed_config.Pack(context)
    return socket


def origination_socket(settings: Mapping[str, Any], default_sni: str, http2: bool) -> base_pb2.TransportSocket:
    """TLS to a server outside the mesh (`settings`: a validated ClientTLSSettings with
    mode SIMPLE or MUTUAL); see the module rules."""
    validation = common_pb2.CertificateValidationContext()
    if not settings.get("insecureSkipVerify"):
        validation.trusted_ca.filename = str(settings.get("caCertificates") or SYSTEM_CA_BUNDLE)
        for san in settings.get("subjectAltNames") or ():
            kind = common_pb2.SubjectAltNameMatcher.URI if san.startswith("spiffe://") else common_pb2.SubjectAltNameMatcher.DNS
            validation.match_typed_subject_alt_names.add(san_type=kind, matcher=string_pb2.StringMatcher(exact=san))
        if settings.get("caCrl"):
            validation.crl.filename = str(settings["caCrl"])
    common = tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
            tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        ),
        alpn_protocols=["h2"] if http2 else [],
        validation_context=validation,
    )
    if settings.get("mode") == "MUTUAL":
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = str(settings["clientCertificate"])
        certificate.private_key.filename = str(settings["privateKey"])
    socket = base_pb2.TransportSocket(name=TLS_TRANSPORT)
    socket.typed_config.Pack(tls_pb2.UpstreamTlsContext(common_tls_context=common,
                                                        sni=str(settings.get("sni") or default_sni)))
    return socket
