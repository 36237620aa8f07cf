"""A node's policy, driven by the control plane: the ADS handler and the CNI policy seam
(`cni.backend.PodPolicy`) over one `NodeEnforcer`.

Rules (every method runs on the agent's datapath thread, so none needs a lock):
- Nothing replaces the kernel's rules until the view is `ready` (namespaces, pods and
  policies each arrived once): an agent restart keeps enforcing what the previous one
  left until the first complete state replaces it in one transaction (`started`).
- An ADS change is compiled in full and applied as a diff. If it cannot be used (bad
  resource) or the kernel refuses it, the view and the rules stay as they were and the
  error is returned, to be NACKed.
- Fail-closed pod start: `pod_pending` (CNI ADD, address reserved, no interface yet) puts
  the address in the ruleset's pending set, which drops everything from or to it;
  `pod_attached` (after the interface is up, before ADD returns) programs the pod's rules
  and releases the hold in one incremental transaction. If the pod's labels
  are unknown (its object has not arrived on the stream yet) they are read from the
  config API; a pod the control plane does not know, an unreachable control plane or a
  refused transaction fails the ADD (which the backend rolls back): a pod is never
  started without its rules.
- A meshed pod (`netpolicy.agent.pod_capture`) gets its transparent capture installed in
  its namespace in `pod_attached`, before its policy rules; a malformed capture
  annotation fails the ADD before anything is installed.
- `pod_detached` (DEL, GC) removes the pod's elements and clears its reported address.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from cni.backend import PodAttachment
from cni.capture import CaptureConfigError
from cni.errors import CniError, ErrorCode
from cni.ipam_store import Allocation
from cni.overlay import OverlayNode, nodes_from_messages
from netpolicy.agent.control_link import ConfigApi, ControlError, PodStatusReporter
from netpolicy.agent.pod_capture import MESH_ANNOTATION_PREFIXES, capture_config, install_capture
from netpolicy.agent.policy_view import (
    ADMIN_NETWORK_POLICY,
    NAMESPACE,
    NETWORK_POLICY,
    NODE,
    POD,
    LocalPod,
    PodInfo,
    PolicyView,
    ViewError,
    pod_info,
)
from netpolicy.enforcer import NodeEnforcer
from netpolicy.model import PolicyError
from proto.tulle.netpolicy.v1 import pod_pb2

log = logging.getLogger("tulle.agent.policy")


class NodePolicy:
    def __init__(self, node: str, enforcer: NodeEnforcer, api: ConfigApi, reporter: PodStatusReporter,
                 apply_nodes: Callable[[list[OverlayNode]], None]) -> None:
        self.node = node
        self.enforcer = enforcer
        self.api = api
        self.reporter = reporter
        self.apply_nodes = apply_nodes
        self.view = PolicyView(node)
        self.started = threading.Event()
        self._nodes: dict[str, Any] = {}

    def recover(self, allocations: list[Allocation]) -> None:
        """The pods attached before this agent started (from the allocation store)."""
        for a in allocations:
            if a.state == "attached" and a.pod_namespace and a.pod_name:
                self.view = self.view.with_local(LocalPod(a.pod_namespace, a.pod_name, a.address))

    # ------------------------------------------------------------------ ADS
    def on_resources(self, type_url: str, resources: Mapping[str, Any], removed: list[str], replace_all: bool) -> str | None:
        if type_url == NODE:
            return self._on_nodes(resources, removed, replace_all)
        view = self.view
        if replace_all:
            view = _cleared(view, type_url)
        try:
            view = view.apply_response(type_url, resources, removed)
            if view.ready:
                state = view.state()
                if self.started.is_set():
                    self.enforcer.update(state)
                else:
                    done = self.enforcer.start(state)
                    log.info("policy rules in force: %d commands, %d elements", done.commands, done.elements)
        except (ViewError, PolicyError) as e:
            return str(e)
        except Exception as e:  # the kernel refused: rules unchanged
            log.exception("applying %s failed", type_url)
            return f"{type(e).__name__}: {e}"
        self.view = view
        if view.ready:
            self.started.set()
        return None

    def _on_nodes(self, resources: Mapping[str, Any], removed: list[str], replace_all: bool) -> str | None:
        nodes = {} if replace_all else dict(self._nodes)
        nodes.update(resources)
        for name in removed:
            nodes.pop(name, None)
        # A node still waiting for its pod CIDR has no overlay route yet.
        usable = [m for m in nodes.values() if m.pod_cidr and m.underlay_ip]
        try:
            if any(m.name == self.node for m in usable):
                self.apply_nodes(nodes_from_messages(usable))
        except Exception as e:
            return f"node list: {e}"
        self._nodes = nodes
        return None

    # ------------------------------------------------------------------ CNI seam
    def pod_pending(self, address: ipaddress.IPv4Address) -> None:
        """Before the pod's interface exists: its address drops everything until
        `pod_attached` programs its rules (the hold is released in that transaction)."""
        if not self.started.is_set():
            raise CniError(ErrorCode.TRY_AGAIN_LATER, "tulle-agent has not received the cluster's policies yet")
        try:
            self.enforcer.hold(address)
        except Exception as e:
            raise CniError(ErrorCode.DATAPATH_FAILURE, f"holding {address} until its rules are in place: {e}") from None

    def pod_attached(self, pod: PodAttachment) -> None:
        if not pod.pod_namespace or not pod.pod_name:
            raise CniError(ErrorCode.INVALID_ENVIRONMENT,
                           "CNI_ARGS must name the pod (K8S_POD_NAMESPACE, K8S_POD_NAME): policy needs its labels")
        if not self.started.is_set():
            raise CniError(ErrorCode.TRY_AGAIN_LATER, "tulle-agent has not received the cluster's policies yet")
        key = f"{pod.pod_namespace}/{pod.pod_name}"
        view = self.view
        if key not in view.pods:
            view = replace(view, pods={**view.pods, key: self._read_pod(pod)})
        view = view.with_local(LocalPod(pod.pod_namespace, pod.pod_name, pod.address))
        try:
            capture = capture_config(view.pods[key].annotations, self._namespace_labels(view, pod.pod_namespace))
        except CaptureConfigError as e:
            raise CniError(ErrorCode.INVALID_ENVIRONMENT, f"pod {key}: {e}") from None
        if capture is not None:
            try:
                install_capture(pod.netns, capture)
            except Exception as e:
                raise CniError(ErrorCode.DATAPATH_FAILURE, f"pod {key}: installing transparent capture failed: {e}") from None
        try:
            programmed = view.pod(key)
            assert programmed is not None
            self.enforcer.add_pod(view.state(), programmed)
        except (PolicyError, ViewError) as e:
            raise CniError(ErrorCode.DATAPATH_FAILURE, f"pod {key}: policy: {e}") from None
        except Exception as e:
            raise CniError(ErrorCode.DATAPATH_FAILURE, f"pod {key}: programming its policy rules failed: {e}") from None
        self.view = view
        self.reporter.report(pod.pod_namespace, pod.pod_name, str(pod.address))

    def pod_detached(self, pod: PodAttachment) -> None:
        key = f"{pod.pod_namespace}/{pod.pod_name}"
        local = self.view.local.get(key)
        if local is None or local.ip != pod.address:
            return
        before = self.view.pod(key)
        view = self.view.without_local(pod.pod_namespace, pod.pod_name)
        if self.started.is_set() and before is not None:
            self.enforcer.remove_pod(view.state(), before)
        self.view = view
        self.reporter.report(pod.pod_namespace, pod.pod_name, "")

    def _namespace_labels(self, view: PolicyView, namespace: str) -> Mapping[str, str]:
        """The namespace's labels (injection may be enabled there), read from the config API
        when its ADS update is not here yet."""
        known = view.namespaces.get(namespace)
        if known is not None:
            return known.labels
        try:
            doc = self.api.get("Namespace", "", namespace)
        except Exception as e:
            raise CniError(ErrorCode.TRY_AGAIN_LATER, f"namespace {namespace}: tulle-control unreachable: {e}") from None
        labels: Mapping[str, str] = ((doc or {}).get("metadata") or {}).get("labels") or {}
        return labels

    def _read_pod(self, pod: PodAttachment) -> PodInfo:
        """The pod's labels and ports from the config API (its ADS update is not here yet)."""
        try:
            doc = self.api.get("Pod", pod.pod_namespace, pod.pod_name)
        except ControlError as e:
            raise CniError(ErrorCode.TRY_AGAIN_LATER, f"pod {pod.pod_namespace}/{pod.pod_name}: {e}") from None
        except Exception as e:
            raise CniError(ErrorCode.TRY_AGAIN_LATER,
                           f"pod {pod.pod_namespace}/{pod.pod_name}: tulle-control unreachable: {e}") from None
        if doc is None:
            raise CniError(ErrorCode.DATAPATH_FAILURE,
                           f"pod {pod.pod_namespace}/{pod.pod_name} does not exist in tulle-control; create it first")
        msg = pod_pb2.Pod(name=pod.pod_name, namespace=pod.pod_namespace, node_name=self.node,
                          labels=(doc.get("metadata") or {}).get("labels") or {},
                          annotations={k: str(v) for k, v in ((doc.get("metadata") or {}).get("annotations") or {}).items()
                                       if k.startswith(MESH_ANNOTATION_PREFIXES)})
        for c in (doc.get("spec") or {}).get("containers") or ():
            for p in c.get("ports") or ():
                if "containerPort" in p:
                    msg.ports.add(name=str(p.get("name", "")), port=int(p["containerPort"]),
                                  protocol=str(p.get("protocol", "TCP")))
        return pod_info(f"{pod.pod_namespace}/{pod.pod_name}", msg)


def _cleared(view: PolicyView, type_url: str) -> PolicyView:
    if type_url == NAMESPACE:
        return replace(view, namespaces={})
    if type_url == POD:
        return replace(view, pods={})
    if type_url == NETWORK_POLICY:
        return replace(view, policies={})
    if type_url == ADMIN_NETWORK_POLICY:
        return replace(view, admin_policies={})
    return view
