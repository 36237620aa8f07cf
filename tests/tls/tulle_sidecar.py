"""tulle-proxy as a pod's sidecar in the mTLS lab of tests/mtls/harness.py: the same
bootstrap a real Envoy sidecar gets there (ADS from tulle-control, SDS from the node
agent's per-pod socket), so either side of a pair can be Tulle or Envoy."""

from __future__ import annotations

from pathlib import Path

from netpolicy.agent.identity import PodRef
from tests.mtls.harness import Mesh, sidecar_bootstrap
from tests.proxy_process import TULLE, ProxyProcess

__all__ = ["TULLE", "TulleSidecar"]


class TulleSidecar(ProxyProcess):
    """tulle-proxy as a pod's sidecar, with the interface of tests.mtls.harness.Sidecar;
    ready once LIVE (its first xDS listeners and routes are in place)."""

    def __init__(self, mesh: Mesh, pod: PodRef, ip: str, sds_socket: Path, intercept: bool) -> None:
        super().__init__("tulle-proxy", sidecar_bootstrap(mesh, pod, ip, sds_socket, intercept), "tulle-mtls-tulle-",
                         until_live=True)

    def listening(self, name: str) -> bool:
        return f'"{name}"' in self.get("/config_dump").decode()
