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
from typing import TYPE_CHECKING

from proxy.access_log import envoy_failure_reason
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
        UpstreamTcp.data_received(self, data)


class LoggedDownstreamTcp(DownstreamTcp):
    """A downstream connection that is also its own access log record (access_log_format's
    getters read the attributes and methods below)."""

    upstream_type = LoggedUpstreamTcp
    version = None        # no protocol, no response code: Envoy's TCP values
    status = 0
    __slots__ = ("_attached", "_cluster_name", "_failure", "_flags", "_upstream_local", "bytes_sent",
                 "downstream_local", "downstream_remote", "received", "start", "upstream")

    def __init__(self, owner: TcpProxyFilter, destination: tuple[str, int] | None = None) -> None:
        super().__init__(owner, destination)
        self.start = 0.0
        self.received = 0
        self.bytes_sent = 0
        self.upstream = "-"
        self.downstream_local: tuple[str, int] | None = destination
        self.downstream_remote: tuple[str, int] | None = None
        self._flags = "-"
        self._attached = False
        self._failure: str | None = None
        self._cluster_name: str | None = None
        self._upstream_local: tuple[str, int] | None = None

    # the relay, counted

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
        self._cluster_name = cluster.name
        if host is not None:
            self.upstream = host.key
        if flag == "UF":
            self._flags = "UF,URX"   # Envoy: the connect attempts are exhausted
            errno = getattr(error, "errno", None)
            self._failure = envoy_failure_reason(
                f"delayed connect error: {errno}" if errno else None)
        else:
            self._flags = flag

    def _attach(self, upstream: UpstreamTcp, cluster: Cluster, host: object) -> None:
        assert isinstance(host, Host)
        self.upstream = host.key
        self._cluster_name = cluster.name
        self._flags = "-"
        self._failure = None
        self._attached = True
        if upstream.transport is not None:
            self._upstream_local = upstream.transport.get_extra_info("sockname")
        super()._attach(upstream, cluster, host)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        access_log = self.owner.access_log
        assert access_log is not None
        access_log.write_record(self, asyncio.get_running_loop().time())

    # the access log record

    def response_flags(self) -> str:
        return self._flags

    def response_code_details(self) -> None:
        return None

    def transport_failure_reason(self) -> str | None:
        return self._failure

    def bytes_received(self) -> int:
        # bytes held while no upstream was up never left the (paused) socket in Envoy
        return self.received if self._attached else 0

    def cluster_name(self) -> str | None:
        return self._cluster_name

    def upstream_local(self) -> tuple[str, int] | None:
        return self._upstream_local

    def remote_address(self) -> tuple[str, int] | None:
        return self.downstream_remote

    def requested_server_name(self) -> None:
        return None

    def route_name(self) -> None:
        return None

    def request_header(self, name: str) -> None:
        return None

    def response_header(self, name: str) -> None:
        return None

    def trailer(self, name: str) -> None:
        return None
