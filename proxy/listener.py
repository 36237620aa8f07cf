"""A listener's configuration: where it binds, its listener filters, and the filter chains
that serve its connections.

Rules (envoy.config.listener.v3.Listener):
- Each filter chain holds one terminal network filter — `http_connection_manager` or
  `tcp_proxy` — identified by its typed_config type URL (or, without one, by its
  well-known name), optionally preceded by network RBAC filters; its transport_socket (a
  DownstreamTlsContext) makes it TLS. `filter_chain_match` selects among the chains
  (proxy/filter_chain_match.py); `default_filter_chain` serves connections no chain matches.
- Listener filters: `original_dst` (the destination before capture, SO_ORIGINAL_DST) and
  `tls_inspector` (transport protocol, SNI, ALPN from the ClientHello), waiting at most
  `listener_filters_timeout` (15 s) for the first bytes; on timeout the connection is
  closed unless `continue_on_listener_filters_timeout`.
- `use_original_dst`: a connection whose original destination is another listener's
  address (one with `bind_to_port: false`, matched by IP and port, else 0.0.0.0 and port)
  is handed to that listener; otherwise this listener's chains serve it.
- TCP socket addresses only.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.listener.v3.listener_components_pb2 import FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2 import OriginalDst
from envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2 import TlsInspector
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.filter_chain_match import ChainMatch
from proxy.http.hcm_config import HcmConfig
from proxy.proto_config import join, seconds
from proxy.rbac import RBAC_NETWORK_TYPE, RbacConfig
from proxy.tcp_proxy import TcpProxyConfig
from proxy.tls.transport_socket import TlsConfig, transport_socket_from_proto

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ORIGINAL_DST_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
_LISTENER_FILTERS = {"envoy.filters.listener.original_dst": ORIGINAL_DST_TYPE,
                     "envoy.filters.listener.tls_inspector": TLS_INSPECTOR_TYPE}
_LISTENER_FILTER_MESSAGES = {ORIGINAL_DST_TYPE: OriginalDst, TLS_INSPECTOR_TYPE: TlsInspector}


@dataclass(frozen=True, slots=True)
class SocketAddress:
    address: str
    port: int

    @classmethod
    def from_proto(cls, message: Message, path: str) -> SocketAddress:
        reject_unsupported(message, path, ("socket_address",))
        if not message.HasField("socket_address"):
            raise ConfigError(join(path, "socket_address"), "is required")
        socket_address = message.socket_address
        here = join(path, "socket_address")
        reject_unsupported(socket_address, here, ("address", "port_value", "protocol", "ipv4_compat"))
        if socket_address.protocol != 0:
            raise ConfigError(join(here, "protocol"), "only TCP is supported")
        if not socket_address.address:
            raise ConfigError(join(here, "address"), "must not be empty")
        return cls(socket_address.address, socket_address.port_value)


@dataclass(frozen=True, slots=True)
class FilterChainConfig:
    name: str
    match: ChainMatch
    http: HcmConfig | None = None
    tcp: TcpProxyConfig | None = None
    tls: TlsConfig | None = None      # the chain's DownstreamTlsContext; None: plaintext
    rbac: tuple[RbacConfig, ...] = ()  # network RBAC filters, in order, before tcp_proxy/HCM

    @classmethod
    def from_proto(cls, chain: FilterChain, here: str) -> FilterChainConfig:
        reject_unsupported(chain, here, ("filters", "name", "transport_socket", "filter_chain_match"))
        match = (ChainMatch.from_proto(chain.filter_chain_match, join(here, "filter_chain_match"))
                 if chain.HasField("filter_chain_match") else ChainMatch())
        tls = (transport_socket_from_proto(chain.transport_socket, join(here, "transport_socket"),
                                           server_side=True)
               if chain.HasField("transport_socket") else None)
        if not chain.filters:
            raise ConfigError(join(here, "filters"), "a terminal network filter is required")
        rbac = []
        for index, network_filter in enumerate(chain.filters[:-1]):
            at = f"{here}.filters[{index}]"
            reject_unsupported(network_filter, at, ("name", "typed_config"))
            if network_filter.typed_config.type_url != RBAC_NETWORK_TYPE:
                raise ConfigError(at, f"network filter {network_filter.name!r} is not supported before "
                                  "the terminal filter (network RBAC only)")
            rbac.append(RbacConfig.network_from_any(network_filter.typed_config, join(at, "typed_config")))
        network_filter = chain.filters[-1]
        at = f"{here}.filters[{len(chain.filters) - 1}]"
        reject_unsupported(network_filter, at, ("name", "typed_config"))
        type_url = network_filter.typed_config.type_url
        if type_url == HCM_TYPE or (not type_url and network_filter.name ==
                                    "envoy.filters.network.http_connection_manager"):
            hcm = HttpConnectionManager()
            network_filter.typed_config.Unpack(hcm)
            return cls(chain.name, match, http=HcmConfig.from_proto(hcm, join(at, "typed_config")), tls=tls,
                       rbac=tuple(rbac))
        if type_url == TCP_PROXY_TYPE or (not type_url and network_filter.name ==
                                          "envoy.filters.network.tcp_proxy"):
            tcp = TcpProxy()
            network_filter.typed_config.Unpack(tcp)
            return cls(chain.name, match, tcp=TcpProxyConfig.from_proto(tcp, join(at, "typed_config")), tls=tls,
                       rbac=tuple(rbac))
        raise ConfigError(at, f"network filter {network_filter.name!r} ({type_url or 'no type'}) "
                          "is not supported (http_connection_manager, tcp_proxy)")

    def clusters(self) -> set[str]:
        if self.http is not None:
            table = self.http.route_table
            return table.clusters() if table is not None else set()
        assert self.tcp is not None
        return self.tcp.clusters()


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    address: SocketAddress
    chains: tuple[FilterChainConfig, ...] = ()
    default_chain: FilterChainConfig | None = None
    original_dst: bool = False
    tls_inspector: bool = False
    use_original_dst: bool = False
    bind_to_port: bool = True
    # per_connection_buffer_limit_bytes: a connection's unsent bytes before its peer stops
    # being read (None: the default of each filter)
    buffer_limit: int | None = None
    filters_timeout: float = 15.0
    continue_on_filters_timeout: bool = False
    # DEFAULT: drains on replacement and while the server is health-check failed (its HTTP
    # responses then close their connections); MODIFY_ONLY: on replacement only
    drain_type: str = "DEFAULT"

    @classmethod
    def from_proto(cls, message: Listener, path: str) -> ListenerConfig:
        reject_unsupported(message, path, ("name", "address", "filter_chains", "stat_prefix",
                                           "traffic_direction", "default_filter_chain", "listener_filters",
                                           "listener_filters_timeout", "continue_on_listener_filters_timeout",
                                           "use_original_dst", "bind_to_port",
                                           "enable_reuse_port", "metadata",
                                           "per_connection_buffer_limit_bytes", "drain_type"))
        address = SocketAddress.from_proto(message.address, join(path, "address"))
        chains = tuple(FilterChainConfig.from_proto(chain, f"{path}.filter_chains[{index}]")
                       for index, chain in enumerate(message.filter_chains))
        default = (FilterChainConfig.from_proto(message.default_filter_chain, join(path, "default_filter_chain"))
                   if message.HasField("default_filter_chain") else None)
        if not chains and default is None:
            raise ConfigError(join(path, "filter_chains"), "at least one filter chain (or a "
                              "default_filter_chain) is required")
        seen: dict[ChainMatch, int] = {}
        for index, chain in enumerate(chains):
            if chain.match in seen:
                raise ConfigError(f"{path}.filter_chains[{index}].filter_chain_match",
                                  f"the same match as filter_chains[{seen[chain.match]}]")
            seen[chain.match] = index
        kinds = set()
        for index, listener_filter in enumerate(message.listener_filters):
            at = f"{path}.listener_filters[{index}]"
            reject_unsupported(listener_filter, at, ("name", "typed_config"))
            type_url = listener_filter.typed_config.type_url or _LISTENER_FILTERS.get(listener_filter.name, "")
            if type_url not in _LISTENER_FILTERS.values():
                raise ConfigError(at, f"listener filter {listener_filter.name!r} ({type_url or 'no type'}) is "
                                  "not supported (original_dst, tls_inspector)")
            if listener_filter.typed_config.type_url:
                # tulle-proxy honours none of their options: any field set is refused
                config = _LISTENER_FILTER_MESSAGES[type_url]()
                listener_filter.typed_config.Unpack(config)
                reject_unsupported(config, join(at, "typed_config"), ())
            kinds.add(type_url)
        timeout = (seconds(message.listener_filters_timeout) if message.HasField("listener_filters_timeout")
                   else 15.0)
        return cls(message.name, address, chains, default,
                   original_dst=ORIGINAL_DST_TYPE in kinds, tls_inspector=TLS_INSPECTOR_TYPE in kinds,
                   use_original_dst=message.use_original_dst.value,
                   bind_to_port=message.bind_to_port.value if message.HasField("bind_to_port") else True,
                   buffer_limit=(message.per_connection_buffer_limit_bytes.value or None
                                 if message.HasField("per_connection_buffer_limit_bytes") else None),
                   filters_timeout=timeout,
                   continue_on_filters_timeout=message.continue_on_listener_filters_timeout,
                   drain_type=Listener.DrainType.Name(message.drain_type))

    def all_chains(self) -> tuple[FilterChainConfig, ...]:
        return self.chains + ((self.default_chain,) if self.default_chain is not None else ())

    @property
    def simple(self) -> bool:
        """One chain matching everything, no listener filters: bound as a plain server."""
        return (len(self.all_chains()) == 1 and self.all_chains()[0].match == ChainMatch()
                and not (self.original_dst or self.tls_inspector or self.use_original_dst)
                and not self.all_chains()[0].rbac)

    @property
    def http(self) -> HcmConfig | None:
        """The HTTP connection manager of a single-chain listener."""
        chains = self.all_chains()
        return chains[0].http if len(chains) == 1 else None

    @property
    def tcp(self) -> TcpProxyConfig | None:
        chains = self.all_chains()
        return chains[0].tcp if len(chains) == 1 else None

    @property
    def tls(self) -> TlsConfig | None:
        chains = self.all_chains()
        return chains[0].tls if len(chains) == 1 else None

    def rds_names(self) -> set[str]:
        return {chain.http.rds_name for chain in self.all_chains() if chain.http is not None and chain.http.rds_name}

    def clusters(self) -> set[str]:
        names: set[str] = set()
        for chain in self.all_chains():
            names |= chain.clusters()
        return names
