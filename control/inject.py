"""Sidecar injection into workload manifests, as `istioctl kube-inject` does it.

Rules:
- Kinds that carry a pod: Pod (the pod itself) and Deployment, StatefulSet, DaemonSet,
  ReplicaSet, Job (`spec.template`), CronJob (`spec.jobTemplate.spec.template`). Other
  documents pass through untouched, in their order.
- A pod is skipped when it opts out (annotation `sidecar.tulle.io/inject: "false"`) or
  uses the host's network (its traffic cannot be captured without capturing the node's).
- Injection adds, in this order of importance:
  * the `tulle-proxy` container FIRST among the containers, so that runtimes start it
    before the application (the ordering Istio users ask for); its readiness probe is
    the proxy's admin `/ready`; it runs as uid 1337, which capture rules exclude;
  * volumes for the proxy's bootstrap and the node agent's socket (identity requests);
  * annotations: `sidecar.tulle.io/inject: "true"` (what tulle-cni reads to install
    transparent capture) and `sidecar.tulle.io/status`, a JSON record of what was added.
- Injection is idempotent: a pod that already carries the status annotation is first
  stripped of what that record names, then injected again, so running inject twice
  gives the same manifest as running it once (and picks up a newer proxy image).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

INJECT_ANNOTATION = "sidecar.tulle.io/inject"
STATUS_ANNOTATION = "sidecar.tulle.io/status"
PROXY_CONTAINER = "tulle-proxy"
PROXY_UID = 1337
ADMIN_PORT = 15000
VOLUMES = ("tulle-bootstrap", "tulle-agent-socket")

_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class InjectionError(ValueError):
    """A manifest that cannot be injected; the message names the document and field."""


@dataclass(frozen=True, slots=True)
class InjectionConfig:
    image: str = "tulle/proxy:0.1.0"
    agent_socket_dir: str = "/run/tulle/agent"


def inject(documents: Iterable[Any], config: InjectionConfig = InjectionConfig()) -> list[Any]:
    return [_inject_document(doc, i, config) for i, doc in enumerate(documents)]


def _inject_document(document: Any, index: int, config: InjectionConfig) -> Any:
    if not isinstance(document, dict) or document.get("kind") not in _TEMPLATE_PATHS:
        return document
    where = f"document {index} ({document['kind']} {document.get('metadata', {}).get('name', '?')})"
    injected = copy.deepcopy(document)
    pod: Any = injected
    for key in _TEMPLATE_PATHS[document["kind"]]:
        pod = pod.get(key)
        if not isinstance(pod, dict):
            raise InjectionError(f"{where}: missing {'.'.join(_TEMPLATE_PATHS[document['kind']])}")
    metadata = pod.setdefault("metadata", {})
    annotations = metadata.setdefault("annotations", {}) or {}
    metadata["annotations"] = annotations
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        raise InjectionError(f"{where}: the pod has no spec.containers")
    if str(annotations.get(INJECT_ANNOTATION, "")).lower() == "false" or spec.get("hostNetwork"):
        return document
    _remove_previous_injection(spec, annotations)
    spec["containers"].insert(0, _proxy_container(config))
    spec.setdefault("volumes", []).extend(_volumes(config))
    annotations[INJECT_ANNOTATION] = "true"
    annotations[STATUS_ANNOTATION] = json.dumps(
        {"containers": [PROXY_CONTAINER], "volumes": list(VOLUMES), "image": config.image},
        sort_keys=True,
    )
    return injected


def _remove_previous_injection(spec: dict[str, Any], annotations: dict[str, Any]) -> None:
    if STATUS_ANNOTATION not in annotations:
        return
    status = json.loads(annotations.pop(STATUS_ANNOTATION))
    spec["containers"] = [c for c in spec["containers"] if c.get("name") not in status["containers"]]
    spec["volumes"] = [v for v in spec.get("volumes", []) if v.get("name") not in status["volumes"]]
    if not spec["volumes"]:
        del spec["volumes"]


def _proxy_container(config: InjectionConfig) -> dict[str, Any]:
    def field_env(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return {
        "name": PROXY_CONTAINER,
        "image": config.image,
        "args": ["-c", "/etc/tulle/bootstrap.yaml", "--concurrency", "1"],
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "ports": [{"name": "tulle-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": ADMIN_PORT},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [
            {"name": "tulle-bootstrap", "mountPath": "/etc/tulle"},
            {"name": "tulle-agent-socket", "mountPath": config.agent_socket_dir},
        ],
    }


def _volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    return [
        {"name": "tulle-bootstrap", "emptyDir": {"medium": "Memory"}},
        {"name": "tulle-agent-socket", "hostPath": {"path": config.agent_socket_dir, "type": "Directory"}},
    ]
