"""Services on the agent's ADS stream: what tulle-control sends (ClusterIP joined with ready
endpoints by port name) and what the agent makes of it (the service table, names, NACKs)."""

from __future__ import annotations

import ipaddress
from typing import Any

from control.xds.agent import agent_resources
from control.xds.mesh import MeshSnapshot
from control.xds.sidecar import TranslationMemo
from netpolicy.agent.node_services import NodeServices
from netpolicy.service_table import TABLE
from proto.tulle.netpolicy.v1 import service_pb2

SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "catalog", "namespace": "shop", "resourceVersion": "9"},
           "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "catalog"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "grpc", "port": 9000}]}}
ENDPOINTS = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "catalog", "namespace": "shop"},
             "subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "node-1"}],
                          "notReadyAddresses": [{"ip": "10.244.2.9", "nodeName": "node-2"}],
                          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}
HEADLESS = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}


class RecordingApplier:
    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []

    def apply(self, document: dict[str, Any]) -> None:
        self.documents.append(document)


def sent(*docs: dict[str, Any]) -> dict[str, Any]:
    resources = agent_resources(MeshSnapshot.from_documents(docs), "node-1", TranslationMemo())
    return {r.name: r.message for r in resources if isinstance(r.message, service_pb2.Service)}


def test_agents_get_each_cluster_ip_service_with_its_ready_endpoints_per_port() -> None:
    services = sent(SERVICE, ENDPOINTS, HEADLESS)
    assert list(services) == ["shop/catalog"]  # headless: no ClusterIP to program
    msg = services["shop/catalog"]
    assert (msg.cluster_ip, msg.resource_version) == ("10.96.0.20", "9")
    http, grpc = msg.ports
    assert [(e.ip, e.port, e.node_name) for e in http.endpoints] == [("10.244.1.5", 8080, "node-1")]
    assert list(grpc.endpoints) == []  # no endpoint port named grpc: refused at once


def message(cluster_ip: str = "10.96.0.20", endpoint_ip: str = "10.244.1.5") -> service_pb2.Service:
    msg = service_pb2.Service(name="catalog", namespace="shop", cluster_ip=cluster_ip)
    msg.ports.add(name="http", port=80, protocol="TCP").endpoints.add(ip=endpoint_ip, port=8080)
    return msg


def test_the_agent_programs_the_table_and_resolves_the_service_name() -> None:
    applier = RecordingApplier()
    services = NodeServices(applier)
    assert services.on_resources({"shop/catalog": message()}, [], True) is None
    assert applier.documents[-1]["nftables"][0] == {"add": {"table": {"family": "inet", "name": TABLE}}}
    assert services.resolve("Catalog.shop.svc.cluster.local.") == ipaddress.IPv4Address("10.96.0.20")
    assert services.on_resources({}, ["shop/catalog"], False) is None
    assert "delete" in applier.documents[-1]["nftables"][0]  # later changes are diffs, not replaces
    assert services.resolve("catalog.shop.svc.cluster.local") is None


def test_an_unusable_service_is_nacked_by_field_and_changes_nothing() -> None:
    applier = RecordingApplier()
    services = NodeServices(applier)
    services.on_resources({"shop/catalog": message()}, [], True)
    error = services.on_resources({"shop/other": message(endpoint_ip="10.244.1")}, [], False)
    assert error == "Service shop/other: ports[0].endpoints[0].ip '10.244.1' is not an IPv4 address"
    assert len(applier.documents) == 1 and list(services.services) == ["shop/catalog"]


def test_a_new_stream_replaces_what_an_earlier_one_delivered() -> None:
    services = NodeServices(RecordingApplier())
    services.on_resources({"shop/catalog": message()}, [], True)
    services.on_resources({"shop/new": message("10.96.0.21")}, [], True)
    assert list(services.services) == ["shop/new"]
