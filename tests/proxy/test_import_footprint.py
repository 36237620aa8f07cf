"""What a proxy without TLS or xDS in its bootstrap loads: not grpc, not cryptography (each
costs ~10 MiB of resident memory, most of the proxy's idle RSS)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PLAINTEXT_BOOTSTRAP = """
static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: target
  clusters:
  - name: target
    connect_timeout: 1s
    load_assignment:
      cluster_name: target
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 10001}}}}]}]
"""


def _loaded_after_start(bootstrap: str) -> set[str]:
    """Top-level packages loaded once the proxy's modules are imported and the bootstrap is
    parsed (in a fresh interpreter)."""
    script = textwrap.dedent(f"""
        import sys
        import proxy.cli, proxy.server
        from proxy.bootstrap import parse_bootstrap
        parse_bootstrap({bootstrap!r})
        print("\\n".join(sorted({{name.split(".")[0] for name in sys.modules}})))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            timeout=60)
    return set(result.stdout.split())


def test_a_plaintext_proxy_loads_neither_grpc_nor_cryptography() -> None:
    loaded = _loaded_after_start(PLAINTEXT_BOOTSTRAP)
    assert "proxy" in loaded
    assert "grpc" not in loaded
    assert "cryptography" not in loaded
