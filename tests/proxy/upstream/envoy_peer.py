"""The real Envoy as an oracle for the balancers: a cluster over a few local HTTP
upstreams (each answers with its own name), driven by header values, so a test can
ask "which upstream did Envoy pick for this key?"."""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

from tests.ports import free_port
from tests.proxy_process import ProxyProcess


class _NameHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        status = self.server.status  # type: ignore[attr-defined]
        # One write: separate header and body segments would meet delayed ACKs (40 ms each).
        self.wfile.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def upstreams(count: int, statuses: Sequence[int] = ()) -> Iterator[list[int]]:
    """`count` HTTP servers on 127.0.0.1; server i answers "i" with statuses[i]
    (default 200). Yields their ports."""
    servers = []
    try:
        for i in range(count):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _NameHandler)
            server.name = str(i)  # type: ignore[attr-defined]
            server.status = statuses[i] if i < len(statuses) else 200  # type: ignore[attr-defined]
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        yield [int(s.server_address[1]) for s in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def bootstrap(
    policy: str, ports: list[int], weights: list[int], listener: int, admin: int, hash_header: str | None = "x-user"
) -> str:
    endpoints = "\n".join(
        f"          - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
        f"            load_balancing_weight: {weight}"
        for port, weight in zip(ports, weights, strict=True)
    )
    hash_policy = (
        f"\n                  hash_policy:\n                  - header: {{header_name: {hash_header}}}"
        if hash_header
        else ""
    )
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: all
              domains: ['*']
              routes:
              - match: {{prefix: /}}
                route:
                  cluster: hashed{hash_policy}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: hashed
    type: STATIC
    connect_timeout: 1s
    lb_policy: {policy}
    load_assignment:
      cluster_name: hashed
      endpoints:
      - lb_endpoints:
{endpoints}
"""


@contextlib.contextmanager
def envoy(config: str, listener: int) -> Iterator[None]:
    """The real Envoy on `config` until the block ends, once `listener` accepts."""
    process = ProxyProcess("envoy", yaml.safe_load(config), "tulle-upstream-envoy-", listening=listener,
                           log_level="error", ready_timeout=15)
    try:
        yield
    finally:
        process.close()


def envoy_picks(
    policy: str, weights: list[int], keys: Sequence[str | tuple[str, ...]]
) -> tuple[list[int], list[int]]:
    """Envoy's choice (upstream index) for each x-user value (a tuple: the header
    repeated with each value), and the upstreams' ports."""
    listener, admin = free_port(), free_port()
    with upstreams(len(weights)) as ports, envoy(bootstrap(policy, ports, weights, listener, admin), listener):
        conn = http.client.HTTPConnection("127.0.0.1", listener, timeout=5)
        picks = []
        for key in keys:
            conn.putrequest("GET", "/")
            for value in (key,) if isinstance(key, str) else key:
                conn.putheader("x-user", value)
            conn.endheaders()
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"envoy answered {response.status} for {key!r}: {body!r}")
            picks.append(int(body))
        conn.close()
        return picks, ports


def envoy_sequence(policy: str, weights: list[int], count: int) -> tuple[list[int], list[int]]:
    """The upstream index Envoy picks for each of `count` requests in a row (no hash
    policy), and the upstreams' ports."""
    listener, admin = free_port(), free_port()
    with (
        upstreams(len(weights)) as ports,
        envoy(bootstrap(policy, ports, weights, listener, admin, hash_header=None), listener),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", listener, timeout=5)
        picks = []
        for _ in range(count):
            conn.request("GET", "/")
            picks.append(int(conn.getresponse().read()))
        conn.close()
        return picks, ports
