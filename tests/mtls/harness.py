"""A two-sidecar mesh on loopback for the mTLS interop tests: tulle-control in-process
(config registry, CA, ADS), the node agent's SDS servers (the agent's own code, one
socket per pod), real Envoys as the client-side and server-side sidecars, and an app.

Loopback stands in for capture: the server sidecar's `virtualInbound` listener (the
translated one, filter chains untouched) is bound to the pod's own loopback address
and the app's port, as if the connection had been redirected there; the app listens on
127.0.0.1 at the same port, as an app in a pod does. The client sidecar runs without
interception, so its outbound listener binds 127.0.0.1:<service port>. Every port is
picked free at run time and every pod address is a fresh 127.x.y.z.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from envoy.config.listener.v3 import listener_pb2

from control.ca.component import CaConfig, CaService
from control.plane import ControlPlane, ControlPlaneConfig
from control.xds.node_identity import NodeIdentity
from control.xds.resources import LISTENER, Resource
from control.xds.service import XdsService
from netpolicy.agent.identity import CertificateAuthorityClient, PodRef
from netpolicy.agent.sds import PodSdsServer, WorkloadSecrets, pod_socket
from tests.answering_server import AnsweringServer
from tests.ports import free_port
from tests.proxy_process import ProxyProcess

T = TypeVar("T")
NODE = "node-1"


class App(AnsweringServer):
    """The server pod's application: answers with the path and the x-forwarded-client-cert
    header it received, and counts the requests that reached it (`hits`)."""

    def __init__(self, port: int) -> None:
        super().__init__(lambda request: json.dumps({"path": request.path, "xfcc": request.headers.get(
            "x-forwarded-client-cert", "")}).encode(), port=port)


def loopback_ip() -> str:
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


class Mesh:
    """tulle-control and the node agent's SDS servers on one event loop in a thread."""

    def __init__(self, state_dir: Path, svid_ttl: dt.timedelta = dt.timedelta(hours=1)) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "run" / "control.sock"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mesh-loop", daemon=True)
        self._thread.start()
        self.xds = XdsService(["127.0.0.1:0"])
        self.xds.ads.override = self._bind_inbound_on_loopback
        self.plane = ControlPlane(
            ControlPlaneConfig(state_dir=state_dir, socket=self.socket, listen=()),
            [CaService(CaConfig(svid_ttl=svid_ttl)), self.xds],
        )
        self.run(self.plane.start())
        self.xds_port = int(self.xds.address.rpartition(":")[2])
        self.sds: list[PodSdsServer] = []
        self.inbound_address: dict[str, tuple[str, int]] = {}  # pod IP -> (IP, app port) for virtualInbound
        self._ca = self.run(self._ca_client())

    async def _ca_client(self) -> CertificateAuthorityClient:
        return CertificateAuthorityClient(NODE, f"unix:{self.socket}")

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def apply(self, *docs: Mapping[str, Any]) -> None:
        self.run(self.plane.registry.apply(list(docs)))

    def start_sds(self, pod: PodRef, root: Path, ttl_seconds: int = 0) -> PodSdsServer:
        server = PodSdsServer(pod_socket(root, pod), WorkloadSecrets(pod, self._ca, ttl_seconds))
        self.run(server.start())
        self.sds.append(server)
        return server

    def _bind_inbound_on_loopback(self, node: NodeIdentity, resources: list[Resource]) -> list[Resource]:
        out = []
        for r in resources:
            if r.type_url == LISTENER and r.name == "virtualOutbound":
                continue  # 15001 is not ours to bind on a shared host
            if r.type_url == LISTENER and r.name == "virtualInbound" and node.ip in self.inbound_address:
                listener = listener_pb2.Listener()
                listener.CopyFrom(r.message)
                ip, port = self.inbound_address[node.ip]
                listener.address.socket_address.address = ip
                listener.address.socket_address.port_value = port
                del listener.listener_filters[0]  # original_dst: nothing was redirected
                r = Resource(r.name, listener)
            out.append(r)
        return out

    def close(self) -> None:
        try:
            for server in self.sds:
                self.run(server.stop())
            self.run(self._ca.close())
            self.run(self.plane.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


def sidecar_bootstrap(mesh: Mesh, pod: PodRef, ip: str, sds_socket: Path, intercept: bool) -> dict[str, Any]:
    """The bootstrap of a pod's sidecar here, Envoy or tulle-proxy alike: ADS from
    tulle-control, SDS from the node agent's socket for `pod` (the admin is the process's)."""

    def grpc_cluster(name: str, address: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": address}}]}]}}

    metadata = {"NAME": pod.name, "NAMESPACE": pod.namespace}
    if not intercept:
        metadata["INTERCEPTION_MODE"] = "NONE"
    return {
        "node": {"id": f"sidecar~{ip}~{pod.name}.{pod.namespace}~{pod.namespace}.svc.cluster.local",
                 "cluster": pod.name, "metadata": metadata},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [
            grpc_cluster("xds-grpc", {"socket_address": {"address": "127.0.0.1", "port_value": mesh.xds_port}}),
            grpc_cluster("sds-grpc", {"pipe": {"path": str(sds_socket)}}),
        ]},
    }


class PodSidecar(Protocol):
    """What the lab asks of a pod's sidecar, a real Envoy (Sidecar) or tulle-proxy
    (tests/tls/tulle_sidecar.py); both are a ProxyProcess."""

    admin: str

    def listening(self, name: str) -> bool: ...
    def stats(self, pattern: str = "") -> dict[str, int]: ...
    def log(self) -> str: ...
    def close(self) -> None: ...


class Sidecar(ProxyProcess):
    """A real Envoy as a pod's sidecar: ADS from tulle-control, SDS from the agent's socket."""

    def __init__(self, mesh: Mesh, pod: PodRef, ip: str, sds_socket: Path, intercept: bool) -> None:
        super().__init__("envoy", sidecar_bootstrap(mesh, pod, ip, sds_socket, intercept), "tulle-mtls-envoy-")

    def listening(self, name: str) -> bool:
        listeners = json.loads(self.get("/listeners?format=json")).get("listener_statuses", [])
        return any(s.get("name") == name for s in listeners)


def eventually(check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, OSError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s" + (f": {last}" if last else ""))


__all__ = ["App", "Mesh", "PodSidecar", "Sidecar", "eventually", "free_port", "loopback_ip", "sidecar_bootstrap"]
