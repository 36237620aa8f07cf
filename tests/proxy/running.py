"""Test helpers: fake upstreams (threaded loopback servers, one of them recording HTTP),
free ports, and a proxy process (tulle-proxy or the real Envoy) started on a rendered
bootstrap and always stopped."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.ports import free_port
from tests.proxy_process import ProxyProcess


class ThreadedUpstream:
    """A loopback TCP server serving each accepted connection on its own thread with `serve`:
    the proxy tests' fake upstreams differ only in that method. A connection's socket times
    out after `timeout` seconds, so a stuck proxy fails its test instead of hanging it, and an
    OSError in `serve` (a reset, that timeout) ends only its connection. `closing` is set
    once `close` is called, for loops that would otherwise outlive the test."""

    timeout = 2.0

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.sock = socket.create_server(address, backlog=16)
        self.port = int(self.sock.getsockname()[1])
        self.closing = threading.Event()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:   # closed: the shutdown in `close` wakes the blocked accept
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(self.timeout)
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closing.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._accepting.join(1)


def read_head(conn: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes] | None:
    """Read from `conn` until the head that `buffer` starts is complete: (head, what followed
    it), or None if the peer closed first."""
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return None
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def echo_until_end(conn: socket.socket, already: bytes = b"") -> bytes:
    """Echo `already`, then every byte read, until the peer ends the stream: everything echoed.
    A reset is an end too: a proxy that closes with our echo unread resets."""
    received = already
    if already:
        conn.sendall(already)
    try:
        while data := conn.recv(65536):
            received += data
            conn.sendall(data)
    except ConnectionResetError:
        pass
    return received


class RecordingUpstream(ThreadedUpstream):
    """An HTTP/1.1 upstream answering 200 "ok" to every read and recording the raw bytes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        while data := conn.recv(65536):
            self.received.append(data)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def hcm_bootstrap(listener_port: int, routes: str, clusters: str, hcm_extra: str = "", *,
                  admin_port: int = 0, domains: str = "['*']") -> str:
    """One HCM listener with one virtual host: `routes` are its route lines (YAML at the route
    list's indent, 14 spaces), `clusters` the cluster list's (2 spaces, see `cluster`), and
    `hcm_extra` lines go into the connection manager (10 spaces)."""
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port or free_port()}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
{hcm_extra}
          route_config:
            virtual_hosts:
            - name: all
              domains: {domains}
              routes:
{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{clusters}
"""


def cluster(name: str, *ports: int, extra: str = "") -> str:
    """A static cluster over local `ports`; `extra` goes into it (whole YAML lines, 4 spaces)."""
    endpoints = ", ".join(
        f"{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}" for port in ports)
    return f"""  - name: {name}
    connect_timeout: 1s
{extra}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{endpoints}]}}]"""


def tcp_proxy_bootstrap(listener_port: int, upstream_port: int, *, admin_port: int = 0,
                        cluster_extra: str = "") -> str:
    """One tcp_proxy listener (stat prefix `tcp`) relaying to cluster `up`; `cluster_extra`
    goes into the cluster (whole YAML lines, 4 spaces)."""
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port or free_port()}}}}}}}
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: up
  clusters:
{cluster("up", upstream_port, extra=cluster_extra)}
"""


def bootstrap(listener_port: int, upstream_port: int, hcm_extra: str = "", *, admin_port: int = 0,
              route_extra: str = "", cluster_extra: str = "") -> str:
    """One HCM listener routing everything to cluster `a`; `route_extra` goes into the route
    action (e.g. ", timeout: 0.3s"), `cluster_extra` into the cluster (whole YAML lines)."""
    return hcm_bootstrap(listener_port, f"              - {{match: {{prefix: /}}, route: {{cluster: a{route_extra}}}}}",
                         cluster("a", upstream_port, extra=cluster_extra), hcm_extra, admin_port=admin_port)


@contextlib.contextmanager
def silent_upstream() -> Iterator[int]:
    """A port whose connections are accepted (by the kernel) and never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def running_proxy(kind: str, config_text: str, port: int, workdir: Path) -> Iterator[None]:
    """Run the real Envoy (`kind` "envoy") or tulle-proxy on `config_text` until the block ends;
    `port` must accept first. Its output goes to `workdir/KIND.log`."""
    process = ProxyProcess("envoy" if kind == "envoy" else "tulle-proxy", yaml.safe_load(config_text),
                           f"tulle-{kind}-", listening=port, log_path=workdir / f"{kind}.log",
                           log_level="error", ready_timeout=15)
    try:
        yield
    finally:
        process.close()


def exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read until the proxy closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        response = b""
        with contextlib.suppress(OSError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                response += chunk
        return response
