"""tulle-agent's link to tulle-control: registering the node, reporting pod addresses,
and the ADS stream that brings the node list, namespaces, pods, policies and services.

Theory of operation (Kubernetes' split between kubelet and the API server):
- Registration: the agent applies its Node with `status.addresses` (InternalIP = its
  underlay address) and the `tulle.io/vtep-mac` annotation, then reads the Node until
  the control plane has allocated `spec.podCIDR`, which becomes the node's pod CIDR.
- Pods are created by users (or the lab); the agent only reports what it knows: after a
  CNI ADD it sets the Pod's `spec.nodeName` and `status.podIP(s)` (read, modify, apply
  with the read resourceVersion; retried on a conflict). Reports run on their own
  thread, in order, so a slow API never delays a CNI call.
- ADS: one delta stream (`DeltaAggregatedResources`), wildcard subscriptions to the
  Tulle types. Each response is handed to `handle(type_url, resources, removed,
  replace)` — which runs it on the datapath thread — and ACKed, or NACKed with the error
  it returned. `replace` is true for the first response of a type on a stream: a delta
  server's first answer is the complete set, so whatever the agent held from an earlier
  stream and is not in it was deleted meanwhile. A broken stream is reopened with
  backoff (0.1 s doubling to 5 s); nothing is dropped from the kernel meanwhile.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from netpolicy.agent.control_credentials import ControlTls, open_channel
from netpolicy.agent.node_services import SERVICE
from netpolicy.agent.policy_view import ADMIN_NETWORK_POLICY, NAMESPACE, NETWORK_POLICY, NODE, POD
from proto.tulle.config.v1 import config_pb2, config_pb2_grpc
from proto.tulle.netpolicy.v1 import (
    admin_network_policy_pb2,
    namespace_pb2,
    network_policy_pb2,
    node_pb2,
    pod_pb2,
    service_pb2,
)

log = logging.getLogger("tulle.agent.control")

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SUBSCRIBED = (NODE, NAMESPACE, POD, NETWORK_POLICY, ADMIN_NETWORK_POLICY, SERVICE)
_MESSAGES: dict[str, Any] = {
    NODE: node_pb2.Node,
    NAMESPACE: namespace_pb2.Namespace,
    POD: pod_pb2.Pod,
    NETWORK_POLICY: network_policy_pb2.NetworkPolicy,
    ADMIN_NETWORK_POLICY: admin_network_policy_pb2.AdminNetworkPolicy,
    SERVICE: service_pb2.Service,
}
VTEP_MAC_ANNOTATION = "tulle.io/vtep-mac"
# Answers no retry changes: registration fails at once with the control plane's reason.
REFUSALS = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)

# (type_url, name -> message, removed names, replace) -> error message or None (ACK)
Handler = Callable[[str, Mapping[str, Any], list[str], bool], "str | None"]


class ControlError(RuntimeError):
    pass


class ControlRefused(ControlError):
    """tulle-control refused the request itself (not a transient failure): retrying
    changes nothing."""


@dataclass(frozen=True)
class ControlAddresses:
    """`api`: the config API (HOST:PORT or unix:PATH); `xds`: the ADS server."""

    api: str
    xds: str

    @classmethod
    def parse(cls, control: str, xds: str | None, tls: ControlTls | None = None) -> ControlAddresses:
        """Without `--xds`: the same address over the unix socket or mTLS (which serve
        xDS too), else the plaintext xDS port of the control host (15010, a lab's)."""
        if xds:
            return cls(control, xds)
        if control.startswith("unix:") or tls is not None:
            return cls(control, control)
        host, _, _ = control.rpartition(":")
        return cls(control, f"{host}:15010")


class ConfigApi:
    """The few config-API calls an agent makes (proto stubs; the agent does not import control)."""

    def __init__(self, address: str, timeout: float = 10.0, tls: ControlTls | None = None) -> None:
        self.timeout = timeout
        self.address = address
        self.tls = tls  # the ADS stream and the CA client use the same credentials
        self._lock = threading.Lock()
        self._generation = tls.generation if tls is not None else 0
        self.channel = open_channel(address, tls)
        self._stub = config_pb2_grpc.ConfigStub(self.channel)

    @property
    def stub(self) -> config_pb2_grpc.ConfigStub:
        """The stub of a channel presenting the current certificate (reopened after a
        renewal; calls in flight on the old one finish first)."""
        tls = self.tls
        if tls is not None and tls.generation != self._generation:
            with self._lock:
                if tls.generation != self._generation:
                    old, self._generation = self.channel, tls.generation
                    self.channel = open_channel(self.address, tls)
                    self._stub = config_pb2_grpc.ConfigStub(self.channel)
                    closer = threading.Timer(self.timeout, old.close)
                    closer.daemon = True
                    closer.start()
        return self._stub

    def close(self) -> None:
        self.channel.close()

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            reply = self.stub.Get(config_pb2.GetRequest(ref=config_pb2.ObjectRef(kind=kind, namespace=namespace, name=name)),
                                  timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise (ControlRefused if e.code() in REFUSALS else ControlError)(f"get {kind} {namespace}/{name} from {self.address}: {e.details()}") from None
        doc: dict[str, Any] = json.loads(reply.document)
        return doc

    def apply(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        reply = self.stub.Apply(config_pb2.ApplyRequest(documents=[json.dumps(doc)]), timeout=self.timeout)
        stored: dict[str, Any] = json.loads(reply.results[0].document)
        return stored


def register_node(api: ConfigApi, node: str, underlay_ip: ipaddress.IPv4Address, vtep_mac: str,
                  timeout: float = 30.0) -> ipaddress.IPv4Network:
    """Applies this node's Node and returns the pod CIDR the control plane gives it."""
    metadata: dict[str, Any] = {"name": node, "annotations": {VTEP_MAC_ANNOTATION: vtep_mac}}
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": metadata,
           "status": {"addresses": [{"type": "InternalIP", "address": str(underlay_ip)}]}}
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            stored = api.get("Node", "", node)
            if stored is not None:
                # Keep what the control plane owns (spec.podCIDR) and say the rest again.
                metadata["resourceVersion"] = stored["metadata"]["resourceVersion"]
                doc["spec"] = stored.get("spec") or {}
            stored = api.apply(doc)
            break
        except (grpc.RpcError, ControlError) as e:
            refused = isinstance(e, ControlRefused) or (isinstance(e, grpc.RpcError) and e.code() in REFUSALS)
            if refused or time.monotonic() > deadline:
                detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
                raise ControlError(f"cannot register node {node} with {api.address}: {detail}") from None
            metadata.pop("resourceVersion", None)
            time.sleep(delay)  # the control plane is still starting: back off
            delay = min(delay * 2, 1.0)
    while not (cidr := (stored.get("spec") or {}).get("podCIDR")):
        if time.monotonic() > deadline:
            raise ControlError(f"node {node}: tulle-control allocated no spec.podCIDR within {timeout:.0f}s")
        time.sleep(0.02)
        stored = api.get("Node", "", node) or stored
    return ipaddress.IPv4Network(cidr)


class PodStatusReporter:
    """Reports pods' addresses to the control plane in order, on its own thread."""

    def __init__(self, api: ConfigApi, node: str) -> None:
        self.api = api
        self.node = node
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="pod-status", daemon=True)
        self._thread.start()

    def report(self, namespace: str, name: str, ip: str) -> None:
        """`ip` "" clears the address (the pod's interface is gone)."""
        self._queue.put((namespace, name, ip))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            for attempt in range(20):
                try:
                    self._report(*item)
                    break
                except grpc.RpcError as e:
                    log.info("pod %s/%s status report (attempt %d): %s", item[0], item[1], attempt + 1, e.details())
                    time.sleep(min(0.05 * 2**attempt, 2.0))
                except ControlError as e:
                    log.warning("%s", e)
                    break

    def _report(self, namespace: str, name: str, ip: str) -> None:
        doc = self.api.get("Pod", namespace, name)
        if doc is None:
            return  # deleted meanwhile: nothing to report on
        status = dict(doc.get("status") or {})
        spec = dict(doc.get("spec") or {})
        if ip:
            spec["nodeName"] = self.node
            status.update(podIP=ip, podIPs=[{"ip": ip}])
        elif spec.get("nodeName") == self.node:
            status.pop("podIP", None)
            status.pop("podIPs", None)
        else:
            return
        if spec == doc.get("spec") and status == doc.get("status"):
            return
        self.api.apply({**doc, "spec": spec, "status": status})


class AdsClient:
    """The agent's delta ADS stream, on its own thread; see the module docstring."""

    def __init__(self, address: str, node: str, underlay_ip: ipaddress.IPv4Address, handle: Handler,
                 tls: ControlTls | None = None) -> None:
        self.address = address
        self.tls = tls
        self.identity = base_pb2.Node(id=f"agent~{underlay_ip}~{node}~cluster.local", user_agent_name="tulle-agent")
        self.handle = handle
        self._stop = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="ads", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._stream()
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                log.warning("ADS stream to %s ended: %s", self.address, e.details() or e.code())
            except Exception:
                log.exception("ADS stream to %s failed", self.address)
            if time.monotonic() - started > 10:
                delay = 0.1  # it had been up a while: reconnect at once
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _stream(self) -> None:
        requests: queue.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = queue.Queue()
        for type_url in SUBSCRIBED:
            requests.put(discovery_pb2.DeltaDiscoveryRequest(node=self.identity, type_url=type_url,
                                                             resource_names_subscribe=["*"]))

        def outgoing() -> Iterator[discovery_pb2.DeltaDiscoveryRequest]:
            while (req := requests.get()) is not None:
                yield req

        with open_channel(self.address, self.tls) as channel:
            method = channel.stream_stream(
                ADS_METHOD,
                request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
            )
            self._call = method(outgoing())
            first: set[str] = set()
            try:
                for response in self._call:
                    requests.put(self._answer(response, response.type_url not in first))
                    first.add(response.type_url)
            finally:
                requests.put(None)

    def _answer(self, response: discovery_pb2.DeltaDiscoveryResponse, replace: bool) -> discovery_pb2.DeltaDiscoveryRequest:
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        message_type = _MESSAGES.get(response.type_url)
        if message_type is None:
            ack.error_detail.CopyFrom(status_pb2.Status(code=3, message=f"unknown type {response.type_url}"))
            return ack
        resources: dict[str, Any] = {}
        try:
            for r in response.resources:
                msg = message_type()
                if not r.resource.Unpack(msg):
                    raise ValueError(f"{r.name}: resource is not a {message_type.DESCRIPTOR.full_name}")
                resources[r.name] = msg
            error = self.handle(response.type_url, resources, list(response.removed_resources), replace)
        except Exception as e:  # a handler bug is a NACK, not a dead stream
            log.exception("applying %s failed", response.type_url)
            error = f"{type(e).__name__}: {e}"
        if error is not None:
            log.warning("NACK %s (nonce %s): %s", response.type_url, response.nonce, error)
            ack.error_detail.CopyFrom(status_pb2.Status(code=3, message=error[:4000]))
        return ack
