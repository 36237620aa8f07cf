"""tcp_proxy connections that keep what Envoy's access log reads about them, and log it.

Rules (Envoy 1.40's tcp_proxy access log): one line when the downstream connection closes;
%BYTES_RECEIVED% / %BYTES_SENT% are the bytes relayed from / to the downstream client,
%DURATION% the connection's lifetime, %RESPONSE_CODE% 0, %PROTOCOL% and the HTTP-only
operators absent; %UPSTREAM_HOST% and %UPSTREAM_CLUSTER% the host last tried, also when
the connect failed. Response flags: UF,URX when every connect attempt failed (with the
failure in %UPSTREAM_TRANSPORT_FAILURE_REASON%), UH without a healthy host, UO when the
circuit breaker refused.

Theory of operation: a listener whose tcp_proxy has `access_log` makes its connections of
these subclasses (TcpProxyFilter.connection_type); they add the per-connection counting to
the relay's callbacks, so a tcp_proxy without access logs runs none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.access_log import address, envoy_failure_reason
from proxy.access_log_format import OPERATORS, FieldValue, Getter, absent, start_time
from proxy.tcp_proxy import DownstreamTcp, TcpProxyFilter, UpstreamTcp
from proxy.upstream.host import Host

if TYPE_CHECKING:
    from proxy.upstream.cluster import Cluster


class LoggedUpstreamTcp(UpstreamTcp):
    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        down = self.down
        assert isinstance(down, LoggedDownstreamTcp)
        down.bytes_sent += len(data)
        super().data_received(data)


class LoggedDownstreamTcp(DownstreamTcp):
    """A downstream connection that is also its own access log record (TCP_OPERATORS read it)."""

    __slots__ = (
        "attached",
        "bytes_sent",
        "cluster_name",
        "downstream_local",
        "downstream_remote",
        "failure",
        "flags",
        "received",
        "start",
        "upstream",
        "upstream_local",
    )

    def __init__(self, owner: TcpProxyFilter, destination: tuple[str, int] | None = None) -> None:
        super().__init__(owner, destination)
        self.start = 0.0
        self.received = 0
        self.bytes_sent = 0
        self.upstream = "-"
        self.downstream_local: tuple[str, int] | None = destination
        self.downstream_remote: tuple[str, int] | None = None
        self.flags = "-"
        self.attached = False
        self.failure: str | None = None
        self.cluster_name: str | None = None
        self.upstream_local: tuple[str, int] | None = None

    # the relay, counted

    def new_upstream(self) -> UpstreamTcp:
        return LoggedUpstreamTcp(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.start = asyncio.get_running_loop().time()
        self.downstream_remote = transport.get_extra_info("peername")
        if self.downstream_local is None:
            self.downstream_local = transport.get_extra_info("sockname")
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)

    def _moved_upstream(self, size: int) -> None:
        self.received += size
        super()._moved_upstream(size)

    def _moved_downstream(self, size: int) -> None:
        self.bytes_sent += size
        super()._moved_downstream(size)

    def upstream_failed(self, flag: str, cluster: Cluster, host: Host | None,
                        error: BaseException | None) -> None:
        self.cluster_name = cluster.name
        if host is not None:
            self.upstream = host.key
        if flag == "UF":
            self.flags = "UF,URX"   # Envoy: the connect attempts are exhausted
            errno = getattr(error, "errno", None)
            self.failure = envoy_failure_reason(
                f"delayed connect error: {errno}" if errno else None)
        else:
            self.flags = flag

    def _attach(self, upstream: UpstreamTcp, cluster: Cluster, host: object) -> None:
        assert isinstance(host, Host)
        self.upstream = host.key
        self.cluster_name = cluster.name
        self.flags = "-"
        self.failure = None
        self.attached = True
        if upstream.transport is not None:
            self.upstream_local = upstream.transport.get_extra_info("sockname")
        super()._attach(upstream, cluster, host)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        access_log = self.owner.access_log
        assert access_log is not None
        access_log.write(self, asyncio.get_running_loop().time())


def _fixed(getter: Callable[[LoggedDownstreamTcp, float], FieldValue]) -> Callable[[str | None], Getter]:
    return lambda _: getter


def _upstream_host(connection: LoggedDownstreamTcp, end: float) -> FieldValue:
    return None if connection.upstream == "-" else connection.upstream


def _bytes_received(connection: LoggedDownstreamTcp, end: float) -> FieldValue:
    # bytes held while no upstream was up never left the (paused) socket in Envoy
    return connection.received if connection.attached else 0


def _remote(connection: LoggedDownstreamTcp, end: float) -> FieldValue:
    return address(connection.downstream_remote)


def _remote_ip(connection: LoggedDownstreamTcp, end: float) -> FieldValue:
    return connection.downstream_remote[0] if connection.downstream_remote else None


# What Envoy's command operators read of a closed tcp_proxy connection: no protocol, a
# response code of 0, no headers, no route.
TCP_OPERATORS: dict[str, Callable[[str | None], Getter]] = {name: absent for name in OPERATORS}
TCP_OPERATORS.update({
    "START_TIME": start_time,
    "DURATION": _fixed(lambda connection, end: int((end - connection.start) * 1000)),
    "RESPONSE_CODE": _fixed(lambda connection, end: 0),
    "RESPONSE_FLAGS": _fixed(lambda connection, end: connection.flags),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _fixed(lambda connection, end: connection.failure),
    "BYTES_RECEIVED": _fixed(_bytes_received),
    "BYTES_SENT": _fixed(lambda connection, end: connection.bytes_sent),
    "UPSTREAM_HOST": _fixed(_upstream_host),
    "UPSTREAM_REMOTE_ADDRESS": _fixed(_upstream_host),
    "UPSTREAM_CLUSTER": _fixed(lambda connection, end: connection.cluster_name),
    "UPSTREAM_CLUSTER_RAW": _fixed(lambda connection, end: connection.cluster_name),
    "UPSTREAM_LOCAL_ADDRESS": _fixed(lambda connection, end: address(connection.upstream_local)),
    "DOWNSTREAM_LOCAL_ADDRESS": _fixed(lambda connection, end: address(connection.downstream_local)),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _fixed(
        lambda connection, end: connection.downstream_local[0] if connection.downstream_local else None),
    "DOWNSTREAM_LOCAL_PORT": _fixed(
        lambda connection, end: str(connection.downstream_local[1]) if connection.downstream_local else None),
    "DOWNSTREAM_REMOTE_ADDRESS": _fixed(_remote),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _fixed(_remote_ip),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _fixed(_remote),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _fixed(_remote_ip),
    "REQUESTED_SERVER_NAME": _fixed(lambda connection, end: connection.server_name or None),
})
