"""A lab's control plane: tulle-control in the lab's underlay namespace, and the few
config-API calls the lab makes as a user would (namespaces and pods).

Rules:
- tulle-control runs inside the underlay namespace, on the underlay bridge's address
  (`CONTROL_IP`): agents reach it over the underlay like any node would, on the
  well-known ports (15014 config API, 15010 xDS) — the namespace is the lab's own, so
  those ports never collide with anything on the machine. Its state (SQLite) lives
  under the lab's directory; meshctl on the host reaches it through unix sockets there
  (`control.sock` for the config API, `xds.sock` for proxy-status).
- The lab creates the Namespace and Pod objects before calling CNI ADD (as a user's
  `kubectl apply` precedes the kubelet); the node's agent then reports the pod's address.
  Labels are changed through the API too. The lab talks to the API through its protocol
  buffers, not through control's client (cni does not import control).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from cni.lab.topology import LabError
from proto.tulle.config.v1 import config_pb2, config_pb2_grpc

CONTROL_IP = ipaddress.IPv4Address("172.30.0.254")
API_PORT = 15014
XDS_PORT = 15010
START_TIMEOUT = 30.0


def control_argv(binary: str, lab_dir: Path) -> list[str]:
    return [binary, "--state-dir", str(lab_dir / "control"), "--socket", str(api_socket(lab_dir)),
            "--listen", f"{CONTROL_IP}:{API_PORT}",
            "--xds-listen", f"{CONTROL_IP}:{XDS_PORT}", "--xds-listen", f"unix:{xds_socket(lab_dir)}"]


def api_socket(lab_dir: Path) -> Path:
    return lab_dir / "control.sock"


def xds_socket(lab_dir: Path) -> Path:
    return lab_dir / "xds.sock"


class LabApi:
    def __init__(self, lab_dir: Path, timeout: float = 10.0) -> None:
        self.channel = grpc.insecure_channel(f"unix:{api_socket(lab_dir)}")
        self.stub = config_pb2_grpc.ConfigStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> LabApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, alive: Any) -> None:
        """Until the API answers; `alive()` false means the process died (raise)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not alive():
                raise LabError("tulle-control exited during start-up")
            try:
                self.stub.Status(config_pb2.StatusRequest(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.05)
        raise LabError(f"tulle-control did not answer within {START_TIMEOUT:.0f}s")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            reply = self.stub.Get(config_pb2.GetRequest(ref=config_pb2.ObjectRef(kind=kind, namespace=namespace, name=name)),
                                  timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise LabError(f"tulle-control: get {kind} {namespace}/{name}: {e.details()}") from None
        doc: dict[str, Any] = json.loads(reply.document)
        return doc

    def apply(self, *docs: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            reply = self.stub.Apply(config_pb2.ApplyRequest(documents=[json.dumps(d) for d in docs]), timeout=self.timeout)
        except grpc.RpcError as e:
            raise LabError(f"tulle-control: apply: {e.details()}") from None
        return [json.loads(r.document) for r in reply.results]

    def list(self, kind: str, namespace: str = "") -> list[dict[str, Any]]:
        try:
            reply = self.stub.List(config_pb2.ListRequest(kind=kind, namespace=namespace), timeout=self.timeout)
        except grpc.RpcError as e:
            raise LabError(f"tulle-control: list {kind}: {e.details()}") from None
        return [json.loads(d) for d in reply.documents]

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.stub.Delete(config_pb2.DeleteRequest(ref=config_pb2.ObjectRef(kind=kind, namespace=namespace, name=name)),
                             timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise LabError(f"tulle-control: delete {kind} {namespace}/{name}: {e.details()}") from None

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Creates the namespace if missing; with `labels`, sets them (the complete set)."""
        found = self.get("Namespace", "", name)
        if found is not None and labels is None:
            return
        meta: dict[str, Any] = {"name": name}
        if labels is not None:
            meta["labels"] = dict(labels)
        if found is not None:
            meta["resourceVersion"] = found["metadata"]["resourceVersion"]
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})

    def create_pod(self, namespace: str, name: str, labels: Mapping[str, str],
                   container_ports: Sequence[Mapping[str, Any]] = (),
                   annotations: Mapping[str, str] | None = None, service_account: str = "") -> None:
        """`container_ports`: the Pod spec's ports ({name, containerPort, protocol}),
        which named ports in policies resolve against; `annotations`, e.g. the mesh's
        `sidecar.tulle.io/inject` and `traffic.tulle.io/*`; `service_account`: the pod's
        identity (spiffe://…/ns/NS/sa/SA), `default` if empty."""
        self.ensure_namespace(namespace)
        container: dict[str, Any] = {"name": "main", "image": "lab"}
        if container_ports:
            container["ports"] = [dict(p) for p in container_ports]
        self.apply({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                                 **({"annotations": dict(annotations)} if annotations else {})},
                    "spec": {"containers": [container],
                             **({"serviceAccountName": service_account} if service_account else {})}})

    def set_pod_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        self._update_pod(namespace, name, "label", lambda meta: meta.update(labels=dict(labels)))

    def mark_pod_terminating(self, namespace: str, name: str, grace_seconds: int) -> None:
        """Sets the pod's deletionTimestamp, as Kubernetes does on a graceful delete: the
        endpoints controller drops the pod from every Service (the object stays, so its
        sidecar keeps its own config while it drains)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._update_pod(namespace, name, "mark terminating",
                         lambda meta: meta.update(deletionTimestamp=now, deletionGracePeriodSeconds=grace_seconds))

    def _update_pod(self, namespace: str, name: str, what: str, change: Callable[[dict[str, Any]], object]) -> None:
        for _ in range(10):  # the agent may be writing the pod's status meanwhile
            doc = self.get("Pod", namespace, name)
            if doc is None:
                raise LabError(f"tulle-control has no pod {namespace}/{name}")
            change(doc["metadata"])
            try:
                self.stub.Apply(config_pb2.ApplyRequest(documents=[json.dumps(doc)]), timeout=self.timeout)
                return
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION):
                    raise LabError(f"tulle-control: {what} pod {namespace}/{name}: {e.details()}") from None
        raise LabError(f"tulle-control: {what} pod {namespace}/{name}: kept conflicting")
