"""A listener's configuration: where it binds and which network filter serves it.

Rules (envoy.config.listener.v3.Listener): one filter chain without a match (its
transport_socket, a DownstreamTlsContext, makes it a TLS listener), holding one
terminal network filter — `envoy.filters.network.http_connection_manager` or
`envoy.filters.network.tcp_proxy` — identified by its typed_config type URL (or, without
one, by its well-known name). TCP socket addresses only.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.http.hcm_config import HcmConfig
from proxy.proto_config import join
from proxy.tcp_proxy import TcpProxyConfig
from proxy.tls.transport_socket import TlsConfig, transport_socket_from_proto

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


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
class ListenerConfig:
    name: str
    address: SocketAddress
    http: HcmConfig | None = None
    tcp: TcpProxyConfig | None = None
    tls: TlsConfig | None = None      # the chain's DownstreamTlsContext; None: plaintext

    @classmethod
    def from_proto(cls, message: Listener, path: str) -> ListenerConfig:
        reject_unsupported(message, path, ("name", "address", "filter_chains", "stat_prefix",
                                           "traffic_direction",
                                           "enable_reuse_port", "metadata"))
        address = SocketAddress.from_proto(message.address, join(path, "address"))
        if len(message.filter_chains) != 1:
            raise ConfigError(join(path, "filter_chains"), "exactly one filter chain is supported")
        chain = message.filter_chains[0]
        here = f"{path}.filter_chains[0]"
        reject_unsupported(chain, here, ("filters", "name", "transport_socket"))
        tls = (transport_socket_from_proto(chain.transport_socket, join(here, "transport_socket"),
                                           server_side=True)
               if chain.HasField("transport_socket") else None)
        if len(chain.filters) != 1:
            raise ConfigError(join(here, "filters"),
                              "exactly one (terminal) network filter is supported")
        network_filter = chain.filters[0]
        at = f"{here}.filters[0]"
        reject_unsupported(network_filter, at, ("name", "typed_config"))
        type_url = network_filter.typed_config.type_url
        if type_url == HCM_TYPE or (not type_url and network_filter.name ==
                                    "envoy.filters.network.http_connection_manager"):
            hcm = HttpConnectionManager()
            network_filter.typed_config.Unpack(hcm)
            return cls(message.name, address,
                       http=HcmConfig.from_proto(hcm, join(at, "typed_config")), tls=tls)
        if type_url == TCP_PROXY_TYPE or (not type_url and network_filter.name ==
                                          "envoy.filters.network.tcp_proxy"):
            tcp = TcpProxy()
            network_filter.typed_config.Unpack(tcp)
            return cls(message.name, address,
                       tcp=TcpProxyConfig.from_proto(tcp, join(at, "typed_config")), tls=tls)
        raise ConfigError(at, f"network filter {network_filter.name!r} ({type_url or 'no type'}) "
                          "is not supported (http_connection_manager, tcp_proxy)")

    def clusters(self) -> set[str]:
        if self.http is not None:
            table = self.http.route_table
            return table.clusters() if table is not None else set()
        assert self.tcp is not None
        return self.tcp.clusters()
