"""Transparent capture on the real kernel: nftables redirects a pod's connections to
tulle-proxy, which recovers the original destination (SO_ORIGINAL_DST) and routes by it —
outbound through the 15001 listener's `use_original_dst` hand-off to the listener of the
service's VIP and port, inbound through 15006's `original_dst` + `tls_inspector` to an
ORIGINAL_DST passthrough cluster (the app on the pod's own address)."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
import yaml

from proxy.stats_text import parse_stats
from tests.kernel import KernelResources
from tests.tls.sidecars import HCM, ROUTER
from tests.tls.tulle_sidecar import TULLE

POD_IP, CLIENT_IP, VIP = "10.77.0.2", "10.77.0.1", "10.96.0.10"
APP_PORT, OUTBOUND, INBOUND, ADMIN = 8080, 15001, 15006, 15000
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def address(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def bootstrap() -> dict[str, Any]:
    def tcp(cluster: str) -> dict[str, Any]:
        return {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                             "typed_config": {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}]}
    hcm = {"@type": HCM, "stat_prefix": f"outbound_{VIP}_80",
           "route_config": {"virtual_hosts": [{"name": "svc", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "outbound|80||svc"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    passthrough = {"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s"}
    return {
        "admin": {"address": address("127.0.0.1", ADMIN)},
        "static_resources": {
            "listeners": [
                {"name": "virtualOutbound", "address": address("0.0.0.0", OUTBOUND),
                 "use_original_dst": True, "default_filter_chain": tcp("PassthroughCluster")},
                {"name": f"{VIP}_80", "address": address(VIP, 80), "bind_to_port": False,
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                 "typed_config": hcm}]}]},
                {"name": "virtualInbound", "address": address("0.0.0.0", INBOUND),
                 "listener_filters": [
                     {"name": "envoy.filters.listener.original_dst", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
                     {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                 "filter_chains": [{"name": "virtualInbound-catchall-tcp",
                                    "filter_chain_match": {"transport_protocol": "raw_buffer"},
                                    **tcp("InboundPassthroughCluster")}]},
            ],
            "clusters": [
                {"name": "PassthroughCluster", **passthrough},
                {"name": "InboundPassthroughCluster", **passthrough},
                {"name": "outbound|80||svc", "connect_timeout": "1s", "load_assignment": {
                    "cluster_name": "svc", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": address(POD_IP, APP_PORT)}}]}]}},
            ],
        },
    }


def run(kernel: KernelResources, ns: str, *argv: str) -> str:
    done = kernel.exec(ns, list(argv), timeout=20)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


@pytest.fixture
def captured_pod(kernel: KernelResources, tmp_path: Any) -> tuple[str, str]:
    """(pod netns, client netns): the pod runs the app and tulle-proxy behind capture."""
    pod, client = kernel.netns("cap"), kernel.netns("capc")
    pod_end, client_end = kernel.veth(pod, client)
    run(kernel, pod, "ip", "addr", "add", f"{POD_IP}/24", "dev", pod_end)
    run(kernel, client, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", client_end)
    run(kernel, pod, "ip", "route", "add", "10.96.0.0/16", "dev", pod_end)
    table = "tulle_capture"
    kernel.nft_table(pod, "ip", table)
    rules = f"""
table ip {table} {{
  chain outbound {{ type nat hook output priority -100; ip daddr {VIP} tcp dport 80 redirect to :{OUTBOUND}; }}
  chain inbound {{ type nat hook prerouting priority -100; tcp dport {APP_PORT} redirect to :{INBOUND}; }}
}}
"""
    done = subprocess.run(["ip", "netns", "exec", pod, "nft", "-f", "-"], input=rules, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kernel.spawn(pod, ["python3", "-m", "http.server", str(APP_PORT), "--bind", "0.0.0.0"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump(bootstrap()))
    kernel.spawn(pod, [str(TULLE), "-c", str(config), "--log-level", "error"])
    deadline = time.monotonic() + 20
    while kernel.exec(pod, ["curl", "-sf", f"http://127.0.0.1:{ADMIN}/ready"]).returncode != 0:
        assert time.monotonic() < deadline, "tulle-proxy did not start"
        time.sleep(0.1)
    return pod, client


def stat(kernel: KernelResources, ns: str, name: str) -> int:
    values = parse_stats(run(kernel, ns, "curl", "-s", f"http://127.0.0.1:{ADMIN}/stats")).values
    assert name in values, f"no stat {name}"
    return values[name]


@pytest.mark.privileged
def test_outbound_capture_hands_the_connection_to_the_listener_of_its_original_destination(
        kernel: KernelResources, captured_pod: tuple[str, str]) -> None:
    pod, _ = captured_pod
    head = run(kernel, pod, "curl", "-s", "-D", "-", "-o", "/dev/null", f"http://{VIP}/")
    assert head.startswith("HTTP/1.1 200")
    assert "x-envoy-upstream-service-time" in head        # served by the VIP's HTTP listener
    assert stat(kernel, pod, "cluster.outbound|80||svc.upstream_rq_2xx") == 1


@pytest.mark.privileged
def test_inbound_capture_passes_connections_to_their_original_destination(
        kernel: KernelResources, captured_pod: tuple[str, str]) -> None:
    pod, client = captured_pod
    head = run(kernel, client, "curl", "-s", "-D", "-", "-o", "/dev/null", f"http://{POD_IP}:{APP_PORT}/")
    assert head.startswith("HTTP/1.0 200")
    assert stat(kernel, pod, "tcp.InboundPassthroughCluster.downstream_cx_total") == 1
