"""A lab pod's processes: its sidecar (tulle-proxy) and its app, started and stopped in
the order Istio users ask for, by a small supervisor that lives in the pod's namespace.

Theory of operation (`cni.lab.sidecar.main` with SPEC.json, started by the lab in the pod's
network namespace, in its own session so it outlives `meshctl lab pod add`):
- The sidecar starts first, as uid/gid 1337 (which the pod's capture rules exclude, so
  its own connections are not redirected back to it), with the bootstrap the lab wrote
  for the pod (`sidecar_bootstrap`): ADS to tulle-control's plaintext xDS on the
  underlay, node id `sidecar~<pod-ip>~<pod>.<ns>~<ns>.svc.cluster.local`, metadata
  NAME / NAMESPACE / INTERCEPTION_MODE=REDIRECT, admin on 127.0.0.1:15000 in the pod.
- Certificates: tulle-proxy runs with `--identity-socket` (its node agent's): it makes its
  own key and gets the pod's SPIFFE certificate from a CSR, the agent attesting the pod by
  the caller's network namespace. Another proxy (Envoy) gets the secrets over SDS from the
  agent's per-pod socket, the `sds-grpc` cluster of the bootstrap.
- The app starts only once the sidecar's admin `/ready` answers 200 (config received,
  listeners up); a sidecar that exits or is not ready within the timeout fails the pod.
- When the app exits, the supervisor lets the sidecar finish the requests it is still
  relaying (until its admin /stats show no `*_rq_active`, at most `DRAIN_TIME`:
  Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS), then POSTs `/quitquitquit` and waits for it to
  exit (SIGKILL after a grace period), then exits with the app's status. SIGTERM (`lab pod
  del`, once no node routes to the pod any more) stops the app first — SIGTERM, SIGKILL
  after `APP_GRACE`, so an app finishes its requests in flight — then the sidecar, the same
  way. `GRACEFUL_STOP` bounds the whole sequence; the lab waits that long before SIGKILL.
- The sidecar is started with PR_SET_PDEATHSIG=SIGKILL: if the supervisor is killed, the
  sidecar dies with it; the lab stops the supervisor by its recorded PID and start time.
- Each step is appended to `events` (JSON lines: event, time, pid/status) in the pod's
  directory: the lab waits on it for `app-started` (or `failed`), tests read the order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from cni.capture import PROXY_UID
from proxy.stats_text import StatsTextError, parse_stats

INJECT_ANNOTATION: Final = "sidecar.tulle.io/inject"
INJECTION_LABEL: Final = "tulle-injection"  # a namespace label: "enabled" meshes its pods
ADMIN_PORT: Final = 15000
XDS_CLUSTER: Final = "xds-grpc"
SDS_CLUSTER: Final = "sds-grpc"  # the name tulle-control's SDS references use
READY_TIMEOUT: Final = 30.0
APP_GRACE: Final = 10.0  # SIGTERM to SIGKILL for the app (Kubernetes' grace period is 30 s)
DRAIN_TIME: Final = 5.0  # at most this long for the sidecar's requests in flight (Istio's drain duration)
QUIT_GRACE: Final = 5.0
GRACEFUL_STOP: Final = APP_GRACE + DRAIN_TIME + QUIT_GRACE + 5.0


def sidecar_node_id(ip: str, name: str, namespace: str) -> str:
    return f"sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local"


def sidecar_bootstrap(ip: str, name: str, namespace: str, xds_host: str, xds_port: int,
                      sds_socket: Path) -> dict[str, Any]:
    """The pod's Envoy v3 bootstrap: everything but the xDS and SDS clusters comes over ADS
    (SotW); certificates come from the node agent's SDS socket for this pod (`sds-grpc`)."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {
            "id": sidecar_node_id(ip, name, namespace),
            "cluster": f"{name}.{namespace}",
            "metadata": {"NAME": name, "NAMESPACE": namespace, "INTERCEPTION_MODE": "REDIRECT"},
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]},
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": [
            _grpc_cluster(XDS_CLUSTER, {"socket_address": {"address": xds_host, "port_value": xds_port}}),
            _grpc_cluster(SDS_CLUSTER, {"pipe": {"path": str(sds_socket)}}),
        ]},
    }


def _grpc_cluster(name: str, address: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
    }


@dataclass(frozen=True)
class PodProcesses:
    """What the supervisor runs; written by the lab as SPEC.json in the pod's directory."""

    directory: str
    proxy: list[str]  # the sidecar's argv (without -c: the bootstrap is added)
    app: list[str]  # empty: the sidecar alone
    ready_timeout: float = READY_TIMEOUT

    @property
    def bootstrap(self) -> Path:
        return Path(self.directory) / "bootstrap.json"

    @property
    def events(self) -> Path:
        return Path(self.directory) / "events"

    def write(self) -> Path:
        path = Path(self.directory) / "spec.json"
        path.write_text(json.dumps(asdict(self)))
        return path


def read_events(directory: Path) -> list[dict[str, Any]]:
    try:
        lines = (directory / "events").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


class _Supervisor:
    def __init__(self, spec: PodProcesses) -> None:
        self.spec = spec
        self.proxy: subprocess.Popen[bytes] | None = None
        self.app: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def event(self, name: str, **fields: Any) -> None:
        with self.spec.events.open("a") as f:
            f.write(json.dumps({"event": name, "time": time.time(), **fields}) + "\n")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        if not self.spec.proxy:  # an app without a sidecar
            return self._run_app()
        # setpriv: uid/gid 1337 without supplementary groups, SIGKILL when the supervisor dies.
        as_proxy = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", "--pdeathsig=KILL"]
        self.proxy = subprocess.Popen([*as_proxy, *self.spec.proxy, "-c", str(self.spec.bootstrap)],
                                      stdin=subprocess.DEVNULL, stdout=self._log("proxy"), stderr=subprocess.STDOUT)
        self.event("proxy-started", pid=self.proxy.pid)
        if not self._wait_ready():
            self._stop_proxy()
            return 1
        self.event("proxy-ready")
        status = 0
        if self.spec.app and not self.stopping:
            status = self._run_app()
        else:
            self.event("app-started", pid=0)
            while not self.stopping and self.proxy.poll() is None:
                time.sleep(0.1)
        self._stop_proxy()
        return status

    def _run_app(self) -> int:
        self.app = subprocess.Popen(self.spec.app, stdin=subprocess.DEVNULL, stdout=self._log("app"),
                                    stderr=subprocess.STDOUT)
        self.event("app-started", pid=self.app.pid)
        status = self.app.wait()
        self.event("app-exited", status=status)
        return status

    def _log(self, name: str) -> Any:
        return (Path(self.spec.directory) / f"{name}.log").open("ab")

    def _wait_ready(self) -> bool:
        assert self.proxy is not None
        deadline = time.monotonic() + self.spec.ready_timeout
        while time.monotonic() < deadline and not self.stopping:
            if self.proxy.poll() is not None:
                self.event("failed", reason=f"sidecar exited with status {self.proxy.returncode} before ready")
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.event("failed", reason=f"sidecar not ready within {self.spec.ready_timeout:.0f}s")
        return False

    def _requests_in_flight(self) -> int:
        """The sidecar's HTTP requests in flight, taken in or sent on (connection managers
        and clusters: either alone can miss some); 0 when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/stats?filter=_rq_active$",
                                        timeout=1) as reply:
                page = parse_stats(reply.read().decode())
        except (urllib.error.URLError, OSError, StatsTextError):
            return 0
        return sum(page.values.values())

    def _stop_proxy(self) -> None:
        assert self.proxy is not None
        deadline = time.monotonic() + DRAIN_TIME
        while self.proxy.poll() is None and time.monotonic() < deadline and self._requests_in_flight():
            time.sleep(0.05)
        if self.proxy.poll() is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{ADMIN_PORT}/quitquitquit", method="POST")
                urllib.request.urlopen(request, timeout=2).close()
                self.event("proxy-quit")
            except (urllib.error.URLError, OSError) as e:
                self.event("proxy-quit-failed", reason=str(e))
                self.proxy.terminate()
            try:
                self.proxy.wait(QUIT_GRACE)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        self.event("proxy-exited", status=self.proxy.returncode)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        app = self.app
        if app is not None and app.poll() is None:
            app.terminate()
            killer = threading.Timer(APP_GRACE, app.kill)  # a no-op once the app has exited
            killer.daemon = True
            killer.start()


def main() -> int:
    spec = PodProcesses(**json.loads(Path(sys.argv[1]).read_text()))
    return _Supervisor(spec).run()


if __name__ == "__main__":
    sys.exit(main())
