"""A proxyless gRPC client (grpcio, `xds:///` target) resolves a Service through
tulle-control and spreads its calls across the Service's endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.xds.harness import ControlPlane, pod, service

CLIENT = Path(__file__).with_name("grpc_client.py")


class WhoamiServer:
    """A gRPC server playing a pod: answers /tulle.test.Whoami/Call with its name."""

    def __init__(self, name: str, host: str) -> None:
        self.name, self.host = name, host
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("tulle.test.Whoami", {"Call": handler})])
        self.port = self._server.add_insecure_port(f"{host}:0")
        self._server.start()

    def close(self) -> None:
        self._server.stop(0).wait(5)


@pytest.fixture
def servers() -> Iterator[list[WhoamiServer]]:
    made = [WhoamiServer("greeter-a", "127.0.0.21"), WhoamiServer("greeter-b", "127.0.0.22")]
    try:
        yield made
    finally:
        for s in made:
            s.close()


def run_client(control: ControlPlane, target: str, calls: int) -> dict[str, int]:
    bootstrap = {
        "xds_servers": [
            {"server_uri": f"127.0.0.1:{control.port}", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
        ],
        "node": {
            "id": "sidecar~127.0.0.1~grpc-client.default~default.svc.cluster.local",
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"},
        },
    }
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap)}
    env.pop("GRPC_XDS_BOOTSTRAP", None)
    done = subprocess.run(
        [sys.executable, str(CLIENT), target, str(calls)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_proxyless_grpc_client_resolves_a_service_and_spreads_calls_over_its_endpoints(
    control: ControlPlane, servers: list[WhoamiServer]
) -> None:
    control.apply(service("greeter", 7070, port_name="grpc"))
    for s in servers:
        control.apply(pod(s.name, s.host, {"app": "greeter"}))
    control.apply(
        {
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "greeter", "namespace": "default"},
            "subsets": [
                {"addresses": [{"ip": s.host, "targetRef": {"kind": "Pod", "name": s.name, "namespace": "default"}}],
                 "ports": [{"name": "grpc", "port": s.port}]}
                for s in servers
            ],
        }
    )
    seen = run_client(control, "xds:///greeter.default.svc.cluster.local:7070", 40)
    # Round robin over two endpoints; the first calls may go out before both
    # subchannels are connected, so the split is near even, not exact.
    assert set(seen) == {"greeter-a", "greeter-b"}
    assert min(seen.values()) >= 10, seen
    statuses = control.call(control.server.status)
    assert [s.kind for s in statuses] in ([], ["proxyless"])  # the client may already be gone


def test_proxyless_grpc_client_follows_a_virtual_service_to_a_subset(
    control: ControlPlane, servers: list[WhoamiServer]
) -> None:
    control.apply(service("greeter", 7070, port_name="grpc"))
    for s, version in zip(servers, ("v1", "v2"), strict=True):
        control.apply(pod(s.name, s.host, {"app": "greeter", "version": version}))
    control.apply(
        {
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "greeter", "namespace": "default"},
            "subsets": [
                {"addresses": [{"ip": s.host, "targetRef": {"kind": "Pod", "name": s.name, "namespace": "default"}}],
                 "ports": [{"name": "grpc", "port": s.port}]}
                for s in servers
            ],
        },
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "greeter", "namespace": "default"},
         "spec": {"host": "greeter", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "greeter", "namespace": "default"},
         "spec": {"hosts": ["greeter"], "http": [{"route": [{"destination": {"host": "greeter", "subset": "v2"}}],
                                                  "timeout": "10s", "retries": {"attempts": 2, "retryOn": "unavailable"}}]}},
    )
    seen = run_client(control, "xds:///greeter.default:7070", 10)
    assert seen == {"greeter-b": 10}
