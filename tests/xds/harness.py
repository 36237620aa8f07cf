"""Real peers for the xDS tests: tulle-control's ADS server on its own event-loop thread,
a real Envoy bootstrapped with only an ADS cluster, and scripted HTTP upstreams.

Everything binds 127.0.0.x on ephemeral ports, every Envoy gets a unique --base-id, and
every process and thread is stopped by the fixture that started it, also on failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from control.xds.debounce import DebounceConfig
from control.xds.server import AdsServer
from tests.answering_server import AnsweringServer
from tests.proxy_process import ENVOY, ProxyProcess

__all__ = ["ENVOY", "ControlPlane", "Envoy", "Upstream"]

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class ControlPlane:
    """An AdsServer running on a private event loop in a thread; `call` runs a function on
    that loop (all server state belongs to it)."""

    def __init__(self, debounce: DebounceConfig | None = None) -> None:
        debounce = debounce or DebounceConfig(quiet=0.02, max_delay=0.2)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ads-loop", daemon=True)
        self._thread.start()
        self.server: AdsServer = self._run(self._make(debounce))
        self.port: int = self._run(self.server.start("127.0.0.1:0"))

    @staticmethod
    async def _make(debounce: DebounceConfig) -> AdsServer:
        return AdsServer(debounce)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                fut.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout=30)

    def apply(self, *docs: Mapping[str, Any]) -> None:
        for doc in docs:
            self.call(self.server.upsert, doc)

    def close(self) -> None:
        try:
            self._run(self.server.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


class Upstream(AnsweringServer):
    """An HTTP server playing a pod: answers every request with its name."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        super().__init__(lambda request: name.encode(), host)


class Envoy(ProxyProcess):
    """A real Envoy whose only static config is the ADS cluster pointing at `ads_port`."""

    def __init__(self, ads_port: int, api_type: str, node_id: str, metadata: Mapping[str, str]) -> None:
        bootstrap = {
            "node": {"id": node_id, "cluster": "tulle-test", "metadata": dict(metadata)},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {
                "clusters": [
                    {
                        "name": "xds-grpc",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "explicit_http_config": {"http2_protocol_options": {}},
                            }
                        },
                        "load_assignment": {
                            "cluster_name": "xds-grpc",
                            "endpoints": [
                                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ads_port}}}}]}
                            ],
                        },
                    }
                ]
            },
        }
        super().__init__("envoy", bootstrap, "tulle-xds-envoy-")

    def config_dump(self, resource: str = "") -> dict[str, Any]:
        dump: dict[str, Any] = json.loads(self.get("/config_dump" + (f"?resource={resource}" if resource else "")))
        return dump


def http_get(port: int, path: str = "/", host: str = "", headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=dict(headers or {}))
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def eventually(check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05) -> T:
    """The first truthy result of `check` within `timeout` seconds (an assertion error
    from `check` counts as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except AssertionError as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s" + (f": {last}" if last else ""))


# -- Kubernetes-shaped documents --------------------------------------------------------


def service(name: str, port: int, ns: str = "default", vip: str = "", port_name: str = "http") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": vip or "10.96.0.10", "selector": {"app": name},
                 "ports": [{"name": port_name, "port": port, "targetPort": port_name}]},
    }


def pod(name: str, ip: str, labels: Mapping[str, str], ns: str = "default", node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {"nodeName": node, "containers": [{"name": "app"}]},
        "status": {"podIP": ip},
    }


def endpoints(name: str, upstreams: list[tuple[str, Upstream]], ns: str = "default", port_name: str = "http") -> dict[str, Any]:
    """v1 Endpoints for pods played by `upstreams` ((pod name, upstream) pairs). Each
    upstream has its own port, so each address is its own subset, as kube does it."""
    return {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns},
        "subsets": [
            {
                "addresses": [{"ip": u.host, "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": p, "namespace": ns}}],
                "ports": [{"name": port_name, "port": u.port, "protocol": "TCP"}],
            }
            for p, u in upstreams
        ],
    }


def fixture_iter(obj: T, close: Callable[[], None]) -> Iterator[T]:
    try:
        yield obj
    finally:
        close()
