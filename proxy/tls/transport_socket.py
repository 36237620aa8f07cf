"""TLS transport sockets: Envoy's UpstreamTlsContext (clusters) and DownstreamTlsContext
(listener filter chains), parsed, validated, and turned into SSL contexts at run time.

Rules (envoy.extensions.transport_sockets.tls.v3):
- Certificates come inline (`tls_certificates`) or by SDS name
  (`tls_certificate_sds_secret_configs`, one); the trust bundle inline (`validation_context`)
  or by SDS name (`validation_context_sds_secret_config`, or `combined_validation_context`
  whose `default_validation_context` adds the SAN matchers to the SDS trust bundle).
- `tls_params`: TLS 1.2 is the floor; the ceiling is 1.3 for servers and 1.2 for clients
  by default, as Envoy's (tulle-control asks for 1.3 both ways, as Istio does); TLS
  1.0/1.1 and cipher or curve lists are refused.
- `match_typed_subject_alt_names` (URI SANs, StringMatcher) is checked on the upstream's
  certificate after the handshake: no matcher matching any URI SAN fails the connection
  (`ssl.fail_verify_san`), which the router reports as a connect failure (503).
- A client certificate is requested when a trust bundle is configured, and required with
  `require_client_certificate`.
- Everything else set in these messages is rejected with its path.

Theory of operation: a `TlsTransport` pairs a config with the SecretStore. `context()`
builds an SSLContext from the secrets' current PEM and caches it until the store's
version changes, so a rotated certificate is used by the next connection while
connections in flight keep the context (and certificate) they handshook with. A listener
makes every connection's SSLObject with `server_context()`, the current context, whatever
context it was bound with (`_ListeningSSLObject`); that context also holds the sessions
the listener issued, and is replaced by an empty one once its cache is full. Client
contexts offer sessions their earlier connections were issued
(proxy/tls/session_resumption.py).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.config.core.v3.config_source_pb2 import ApiConfigSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import TlsParameters
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join
from proxy.router.matchers import StringMatch
from proxy.tls import openssl_direct, session_resumption
from proxy.tls.context import load_certificate, peer_spiffe_ids
from proxy.tls.peer_certificate import LOCAL_URIS_ATTRIBUTE
from proxy.tls.secrets import (
    CertificateSecret,
    Secret,
    SecretStore,
    TrustBundle,
    certificate_from_proto,
    data_source,
)
from proxy.tls.ssl_object import NativeSSLObject

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_NAMES = {"envoy.transport_sockets.tls": None, "tls": None,
          "envoy.transport_sockets.raw_buffer": RAW_BUFFER, "raw_buffer": RAW_BUFFER}
_VERSIONS = {TlsParameters.TLSv1_2: ssl.TLSVersion.TLSv1_2, TlsParameters.TLSv1_3: ssl.TLSVersion.TLSv1_3}
_SAN_URI = 3


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a certificate or trust bundle comes from: inline, or the SDS secret `name`."""

    name: str = ""
    inline: Secret | None = None
    cluster: str = ""            # the static cluster serving the SDS stream

    def resolve(self, store: SecretStore) -> Secret | None:
        return self.inline if self.inline is not None else store.get(self.name)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    server_side: bool
    certificate: SecretSource | None = None
    trust: SecretSource | None = None
    san_matchers: tuple[StringMatch, ...] = ()
    alpn: tuple[str, ...] = ()
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    sni: str = ""
    require_client_certificate: bool = False

    def sds_names(self) -> set[str]:
        return {source.name for source in self.sds_sources()}

    def sds_sources(self) -> tuple[SecretSource, ...]:
        return tuple(source for source in (self.certificate, self.trust)
                     if source is not None and source.inline is None)

    @classmethod
    def upstream_from_proto(cls, message: UpstreamTlsContext, path: str) -> TlsConfig:
        reject_unsupported(message, path, ("common_tls_context", "sni"))
        return _common(message.common_tls_context, join(path, "common_tls_context"), server_side=False,
                       sni=message.sni)

    @classmethod
    def downstream_from_proto(cls, message: DownstreamTlsContext, path: str) -> TlsConfig:
        reject_unsupported(message, path, ("common_tls_context", "require_client_certificate"))
        config = _common(message.common_tls_context, join(path, "common_tls_context"), server_side=True,
                         require=message.require_client_certificate.value)
        if config.san_matchers:
            raise ConfigError(join(path, "common_tls_context"), "match_typed_subject_alt_names on a "
                              "DownstreamTlsContext is not supported by tulle-proxy (use RBAC principals)")
        if config.certificate is None:
            raise ConfigError(join(path, "common_tls_context"), "a server certificate is required "
                              "(tls_certificates or tls_certificate_sds_secret_configs)")
        if config.require_client_certificate and config.trust is None:
            raise ConfigError(join(path, "require_client_certificate"), "needs a validation context")
        return config


def _sds_source(message: Message, path: str) -> SecretSource:
    """An SdsSecretConfig: the secret's name and the static cluster its SDS stream goes to."""
    reject_unsupported(message, path, ("name", "sds_config"))
    if not message.name:
        raise ConfigError(join(path, "name"), "must not be empty")
    if not message.HasField("sds_config"):
        raise ConfigError(join(path, "sds_config"), "is required (tulle-proxy has no inline "
                          "SDS secrets in static_resources.secrets)")
    here = join(path, "sds_config")
    source = message.sds_config
    reject_unsupported(source, here, ("api_config_source", "initial_fetch_timeout", "resource_api_version"))
    if not source.HasField("api_config_source"):
        raise ConfigError(join(here, "api_config_source"), "is required (SDS over a gRPC cluster)")
    api = source.api_config_source
    at = join(here, "api_config_source")
    reject_unsupported(api, at, ("api_type", "transport_api_version", "grpc_services",
                                 "set_node_on_first_message_only"))
    if api.api_type != ApiConfigSource.GRPC:
        raise ConfigError(join(at, "api_type"), "only GRPC is supported")
    if len(api.grpc_services) != 1:
        raise ConfigError(join(at, "grpc_services"), "exactly one gRPC service is supported")
    service = api.grpc_services[0]
    reject_unsupported(service, f"{at}.grpc_services[0]", ("envoy_grpc", "timeout"))
    cluster = service.envoy_grpc.cluster_name
    if not cluster:
        raise ConfigError(f"{at}.grpc_services[0].envoy_grpc.cluster_name", "is required")
    return SecretSource(name=message.name, cluster=cluster)


def _validation(message: Message, path: str, needs_ca: bool) -> tuple[SecretSource | None, tuple[StringMatch, ...]]:
    reject_unsupported(message, path, ("trusted_ca", "match_typed_subject_alt_names"))
    matchers = []
    for index, san in enumerate(message.match_typed_subject_alt_names):
        here = f"{path}.match_typed_subject_alt_names[{index}]"
        reject_unsupported(san, here, ("san_type", "matcher"))
        if san.san_type != _SAN_URI:
            raise ConfigError(join(here, "san_type"), "only URI SANs (SPIFFE IDs) are supported")
        matchers.append(StringMatch.from_proto(san.matcher, join(here, "matcher")))
    trust = None
    if message.HasField("trusted_ca"):
        trust = SecretSource(inline=TrustBundle(data_source(message.trusted_ca, join(path, "trusted_ca"))))
    elif needs_ca:
        raise ConfigError(join(path, "trusted_ca"), "is required")
    return trust, tuple(matchers)


def _common(message: CommonTlsContext, path: str, server_side: bool, sni: str = "",
            require: bool = False) -> TlsConfig:
    reject_unsupported(message, path, ("tls_params", "tls_certificates", "tls_certificate_sds_secret_configs",
                                       "validation_context", "validation_context_sds_secret_config",
                                       "combined_validation_context", "alpn_protocols"))
    minimum = ssl.TLSVersion.TLSv1_2
    maximum = ssl.TLSVersion.TLSv1_3 if server_side else ssl.TLSVersion.TLSv1_2
    if message.HasField("tls_params"):
        here = join(path, "tls_params")
        reject_unsupported(message.tls_params, here, ("tls_minimum_protocol_version",
                                                      "tls_maximum_protocol_version"))
        for name in ("tls_minimum_protocol_version", "tls_maximum_protocol_version"):
            value = getattr(message.tls_params, name)
            if value != TlsParameters.TLS_AUTO and value not in _VERSIONS:
                raise ConfigError(join(here, name), f"{TlsParameters.TlsProtocol.Name(value)} is not "
                                  "supported (TLSv1_2, TLSv1_3)")
        minimum = _VERSIONS.get(message.tls_params.tls_minimum_protocol_version, minimum)
        maximum = _VERSIONS.get(message.tls_params.tls_maximum_protocol_version, maximum)
        if minimum > maximum:
            raise ConfigError(here, "the minimum version is above the maximum")
    certificate: SecretSource | None = None
    if len(message.tls_certificates) + len(message.tls_certificate_sds_secret_configs) > 1:
        raise ConfigError(path, "one certificate is supported (tls_certificates or "
                          "tls_certificate_sds_secret_configs)")
    if message.tls_certificates:
        certificate = SecretSource(inline=certificate_from_proto(message.tls_certificates[0],
                                                                 f"{path}.tls_certificates[0]"))
    elif message.tls_certificate_sds_secret_configs:
        certificate = _sds_source(message.tls_certificate_sds_secret_configs[0],
                                  f"{path}.tls_certificate_sds_secret_configs[0]")
    trust: SecretSource | None = None
    matchers: tuple[StringMatch, ...] = ()
    if message.HasField("validation_context"):
        trust, matchers = _validation(message.validation_context, join(path, "validation_context"), True)
    elif message.HasField("validation_context_sds_secret_config"):
        trust = _sds_source(message.validation_context_sds_secret_config,
                            join(path, "validation_context_sds_secret_config"))
    elif message.HasField("combined_validation_context"):
        here = join(path, "combined_validation_context")
        combined = message.combined_validation_context
        reject_unsupported(combined, here, ("default_validation_context", "validation_context_sds_secret_config"))
        if not combined.HasField("validation_context_sds_secret_config"):
            raise ConfigError(join(here, "validation_context_sds_secret_config"), "is required")
        inline_ca, matchers = _validation(combined.default_validation_context,
                                          join(here, "default_validation_context"), False)
        if inline_ca is not None:
            raise ConfigError(join(here, "default_validation_context.trusted_ca"),
                              "the trust bundle comes from validation_context_sds_secret_config")
        trust = _sds_source(combined.validation_context_sds_secret_config,
                            join(here, "validation_context_sds_secret_config"))
    for index, protocol in enumerate(message.alpn_protocols):
        if not protocol or len(protocol) > 255:
            raise ConfigError(f"{path}.alpn_protocols[{index}]", "must be 1 to 255 bytes")
    if matchers and trust is None:
        raise ConfigError(path, "match_typed_subject_alt_names needs a trust bundle")
    return TlsConfig(server_side, certificate, trust, matchers, tuple(message.alpn_protocols), minimum,
                     maximum, sni, require)


def transport_socket_from_proto(message: TransportSocket, path: str, server_side: bool) -> TlsConfig | None:
    """A TransportSocket: None for raw_buffer (plaintext), else the TLS config."""
    reject_unsupported(message, path, ("name", "typed_config"))
    type_url = message.typed_config.type_url or _NAMES.get(message.name, "")
    wanted, kind = (DOWNSTREAM_TLS, DownstreamTlsContext) if server_side else (UPSTREAM_TLS, UpstreamTlsContext)
    if message.name in _NAMES and not message.typed_config.type_url and _NAMES[message.name] is None:
        type_url = wanted
    if type_url == RAW_BUFFER:
        return None
    if type_url != wanted:
        raise ConfigError(path, f"transport socket {message.name!r} ({type_url or 'no type'}) is not "
                          f"supported here ({wanted.rsplit('.', 1)[-1]}, RawBuffer)")
    context = kind()
    message.typed_config.Unpack(context)
    here = join(path, "typed_config")
    if server_side:
        return TlsConfig.downstream_from_proto(context, here)
    return TlsConfig.upstream_from_proto(context, here)


@dataclass(slots=True)
class TlsStats:
    """Envoy's `ssl.*` stats of a cluster or listener."""

    GAUGES = frozenset[str]()
    handshake: int = 0
    connection_error: int = 0
    fail_verify_san: int = 0
    fail_verify_error: int = 0
    no_certificate: int = 0
    session_reused: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f"ssl.{name}": getattr(self, name) for name in
                ("handshake", "connection_error", "fail_verify_san", "fail_verify_error", "no_certificate",
                 "session_reused")}


def _uris(chain_pem: bytes) -> tuple[str, ...]:
    # cryptography costs ~10 MiB of RSS: loaded only by a proxy that makes TLS contexts
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(chain_pem)
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(names.get_values_for_type(x509.UniformResourceIdentifier))


class SecretNotReady(Exception):
    """An SDS secret the context needs has not arrived yet."""


_TRANSPORT = "_tulle_tls_transport"


class _ListeningSSLObject(NativeSSLObject):
    """A server SSLObject made with its transport's current context rather than the one
    the listener was bound with: asyncio and uvloop make every connection's SSLObject
    through `context.wrap_bio`, which asks `context.sslobject_class`."""

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                server_hostname: str | None = None, session: ssl.SSLSession | None = None,
                context: ssl.SSLContext | None = None) -> Any:
        transport: TlsTransport | None = getattr(context, _TRANSPORT, None)
        if transport is not None:
            with contextlib.suppress(SecretNotReady):   # then the bound context serves
                context = transport.server_context()
        return super()._create(incoming, outgoing, server_side, server_hostname,
                               session=session, context=context)

    def __del__(self) -> None:
        session_resumption.served(self)


class TlsTransport:
    """A TLS config bound to the secret store: the current SSLContext, and SAN checks."""

    def __init__(self, config: TlsConfig, store: SecretStore, stats: TlsStats) -> None:
        self.config = config
        self.store = store
        self.stats = stats
        self._context: ssl.SSLContext | None = None
        self._version = -1

    def context(self) -> ssl.SSLContext:
        """The SSLContext of the current secrets (rebuilt only when they changed)."""
        if self._context is not None and (self._version == self.store.version or not self.config.sds_names()):
            return self._context
        version = self.store.version
        self._context = self._build()
        self._version = version
        return self._context

    def _build(self) -> ssl.SSLContext:
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if config.server_side else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = config.minimum
        context.maximum_version = config.maximum
        context.check_hostname = False
        openssl_direct.prefer_aes128(context)
        if config.certificate is not None:
            secret = config.certificate.resolve(self.store)
            if not isinstance(secret, CertificateSecret):
                raise SecretNotReady(config.certificate.name)
            load_certificate(context, secret.chain_pem, secret.key_pem)
            # what x-forwarded-client-cert names as `By=` (Python cannot read it back)
            setattr(context, LOCAL_URIS_ATTRIBUTE, _uris(secret.chain_pem))
        if config.trust is not None:
            bundle = config.trust.resolve(self.store)
            if not isinstance(bundle, TrustBundle):
                raise SecretNotReady(config.trust.name)
            context.load_verify_locations(cadata=bundle.trusted_ca_pem.decode())
            if config.server_side and not config.require_client_certificate:
                context.verify_mode = ssl.CERT_OPTIONAL
            else:
                context.verify_mode = ssl.CERT_REQUIRED
        else:
            context.verify_mode = ssl.CERT_NONE
        if config.alpn:
            context.set_alpn_protocols(list(config.alpn))
        if config.server_side:
            session_resumption.serve_stateful(context)
            context.sslobject_class = _ListeningSSLObject
            setattr(context, _TRANSPORT, self)
        else:
            session_resumption.enable(context)
        return context

    def server_context(self) -> ssl.SSLContext:
        """The context a listener's new connection handshakes with: the current one, which
        also keeps the sessions it issued (so it is replaced, cache and all, once that cache
        is full). A listener bound once to a context gets this one per connection anyway
        (`_ListeningSSLObject`)."""
        context = self.context()
        if session_resumption.cache_full(context):
            version = self.store.version
            context = self._context = self._build()
            self._version = version
        return context

    def san_verified(self, ssl_object: ssl.SSLObject | None) -> bool:
        """Whether the peer's URI SANs satisfy match_typed_subject_alt_names (counted if not)."""
        matchers = self.config.san_matchers
        if not matchers:
            return True
        ids = peer_spiffe_ids(ssl_object) if ssl_object is not None else ()
        if any(matcher(uri) for uri in ids for matcher in matchers):
            return True
        self.stats.fail_verify_san += 1
        return False
