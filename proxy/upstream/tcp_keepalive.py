"""A cluster's upstream_connection_options.tcp_keepalive: TCP keep-alive probes on every
connection the proxy opens to the cluster's hosts.

Rules (Envoy 1.40, envoy.config.core.v3.TcpKeepalive): the message's presence turns
SO_KEEPALIVE on; `keepalive_time` (TCP_KEEPIDLE, seconds idle before the first probe),
`keepalive_interval` (TCP_KEEPINTVL, seconds between probes) and `keepalive_probes`
(TCP_KEEPCNT, unanswered probes before the connection is dropped) are set when given and
otherwise left to the kernel (net.ipv4.tcp_keepalive_*: 7200 s, 75 s, 9). Values the kernel
would refuse (0, or above 32767 s / 127 probes) are refused at configuration time, naming
the field, rather than failing every connection.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join

_LIMITS = {"keepalive_time": 32767, "keepalive_interval": 32767, "keepalive_probes": 127}


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    time: int | None = None        # TCP_KEEPIDLE
    interval: int | None = None    # TCP_KEEPINTVL
    probes: int | None = None      # TCP_KEEPCNT

    @classmethod
    def from_proto(cls, message: Message, path: str) -> TcpKeepalive:
        reject_unsupported(message, path, tuple(_LIMITS))
        values: dict[str, int | None] = {}
        for name, limit in _LIMITS.items():
            if not message.HasField(name):
                values[name] = None
                continue
            value = getattr(message, name).value
            if not 1 <= value <= limit:
                raise ConfigError(join(path, name), f"must be within 1..{limit}, got {value}")
            values[name] = value
        return cls(time=values["keepalive_time"], interval=values["keepalive_interval"],
                   probes=values["keepalive_probes"])

    def apply(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.time is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.time)
        if self.interval is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, self.interval)
        if self.probes is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.probes)


def upstream_connection_options(message: Message, path: str) -> TcpKeepalive | None:
    """Cluster.upstream_connection_options: only tcp_keepalive is supported."""
    reject_unsupported(message, path, ("tcp_keepalive",))
    if not message.HasField("tcp_keepalive"):
        return None
    return TcpKeepalive.from_proto(message.tcp_keepalive, join(path, "tcp_keepalive"))
