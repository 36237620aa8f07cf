"""Waiting until no proxy or agent routes to a pod any more: the first step of removing a
pod gracefully, read from tulle-control's Client Status Discovery Service (CSDS).

Theory of operation. A pod leaves the lab as it leaves Kubernetes behind a mesh: its Pod
object is deleted first, so tulle-control drops its address from every Endpoints object
and pushes the new assignments; only once every connected node has taken them does the
lab stop the pod's app and sidecar (Istio's and Kubernetes' advice: stop sending before
stopping serving). "Taken" is what CSDS says: for every connected node, each
ClusterLoadAssignment (sidecars) and Service (agents' service tables) it is sent no
longer holds the address, and each was ACKed. `unrouted_everywhere` is that check on one
CSDS answer (sans-IO); `wait_until_unrouted` polls for it, bounded: a node that does not
answer in time must not keep a pod from being removed (the caller goes on, as the
kubelet does after a grace period).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.status.v3 import csds_pb2

from proto.tulle.netpolicy.v1.service_pb2 import Service

CSDS_METHOD: Final = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"
ENDPOINT_TYPE: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SERVICE_TYPE: Final = "type.googleapis.com/tulle.netpolicy.v1.Service"
DRAIN_TIMEOUT: Final = 10.0


def _addresses(type_url: str, value: bytes) -> set[str]:
    if type_url == ENDPOINT_TYPE:
        assignment = ClusterLoadAssignment.FromString(value)
        return {lb.endpoint.address.socket_address.address
                for locality in assignment.endpoints for lb in locality.lb_endpoints}
    if type_url == SERVICE_TYPE:
        return {endpoint.ip for port in Service.FromString(value).ports for endpoint in port.endpoints}
    return set()


def still_routing(status: csds_pb2.ClientStatusResponse, address: str) -> list[str]:
    """The nodes that may still send to `address`: they are sent an assignment or a service
    holding it, or have not ACKed the one that dropped it. Empty: every node is drained."""
    waiting = []
    for config in status.config:
        for entry in config.generic_xds_configs:
            if entry.type_url not in (ENDPOINT_TYPE, SERVICE_TYPE):
                continue
            holds = address in _addresses(entry.xds_config.type_url, entry.xds_config.value)
            if holds or entry.client_status != dump_pb2.ACKED:
                waiting.append(config.node.id)
                break
    return waiting


def fetch_status(xds_socket: Path, timeout: float = 5.0) -> csds_pb2.ClientStatusResponse:
    with grpc.insecure_channel(f"unix:{xds_socket}") as channel:
        call = channel.unary_unary(CSDS_METHOD, request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                                   response_deserializer=csds_pb2.ClientStatusResponse.FromString)
        response: csds_pb2.ClientStatusResponse = call(csds_pb2.ClientStatusRequest(), timeout=timeout)
        return response


def wait_until_unrouted(xds_socket: Path, address: str, timeout: float = DRAIN_TIMEOUT) -> list[str]:
    """Polls CSDS until no node routes to `address`; returns the nodes that still did when
    `timeout` ran out (empty on success, also when tulle-control cannot be asked)."""
    deadline = time.monotonic() + timeout
    waiting: list[str] = []
    while True:
        try:
            waiting = still_routing(fetch_status(xds_socket), address)
        except grpc.RpcError:
            return []
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(0.05)
