"""The mesh end to end on a two-node lab (real kernel, VXLAN underlay, tulle-control,
tulle-agents, tulle-proxy sidecars): transparent capture of TCP and HTTP both ways across
nodes, mutual TLS between meshed pods seen on the wire, VirtualService weights, retries
and outlier ejection observed through captured traffic, and NetworkPolicy still deciding
for meshed pods.

One shop for the module (namespace without PeerAuthentication: PERMISSIVE, Istio's
default). The client runs on node-1 and every server on node-2, so meshed traffic crosses
the underlay. Tests that change config put it back.

    node-1: client (meshed, sa client), plain-client (no sidecar), flaky-bad (meshed)
    node-2: web-v1, web-v2 (meshed, sa web), plain (no sidecar), flaky-ok (meshed)

(A non-meshed pod reaching a ClusterIP spread over endpoints on both nodes is
tests/agent/test_services_lab.py; here a non-meshed pod reaches meshed pods through one.)
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cni.lab import Lab
from cni.lab.topology import LabPod
from tests.e2e.mesh import (
    apply,
    client,
    curl_status,
    eventually,
    get,
    inbound_requests,
    lab_fixture,
    server,
    service,
    spiffe,
    stat_sum,
    stats,
    tcp,
)

pytestmark = pytest.mark.privileged


@dataclass(frozen=True)
class Shop:
    ns: str
    client: LabPod
    plain_client: LabPod
    web_v1: LabPod
    web_v2: LabPod
    plain: LabPod
    flaky_ok: LabPod
    flaky_bad: LabPod

    def url(self, service: str, path: str = "/") -> str:
        return f"http://{service}.{self.ns}:8080{path}"

    def host(self, service: str) -> str:
        return f"{service}.{self.ns}.svc.cluster.local"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from lab_fixture("ms")


@pytest.fixture(scope="module")
def shop(lab: Lab) -> Shop:
    ns = f"m{secrets.token_hex(3)}"
    apply(lab, service(ns, "web", {"app": "web"}, tcp=True), service(ns, "plain", {"app": "plain"}, tcp=True),
          service(ns, "flaky-retry", {"app": "flaky"}), service(ns, "flaky-eject", {"app": "flaky"}))
    shop = Shop(
        ns,
        client=client(lab, ns, "client", "node-1", service_account="client"),
        plain_client=client(lab, ns, "plain-client", "node-1", meshed=False),
        web_v1=server(lab, ns, "web-v1", "node-2", {"app": "web", "version": "v1"}, service_account="web"),
        web_v2=server(lab, ns, "web-v2", "node-2", {"app": "web", "version": "v2"}, service_account="web"),
        plain=server(lab, ns, "plain", "node-2", {"app": "plain"}, meshed=False),
        flaky_ok=server(lab, ns, "flaky-ok", "node-2", {"app": "flaky"}),
        flaky_bad=server(lab, ns, "flaky-bad", "node-1", {"app": "flaky"}),
    )
    eventually(lambda: get(lab, shop.client, shop.url("web"), 20)["pods"].keys() == {"web-v1", "web-v2"},
               "the client's sidecar has both web endpoints")
    eventually(lambda: curl_status(lab, shop.plain_client, shop.url("web")) == 200,
               "the plain client reaches web's ClusterIP")
    return shop


def client_stat(lab: Lab, shop: Shop, name: str) -> int:
    return stat_sum(lab, shop.client, re.escape(name) + "$")


def web_inbound(lab: Lab, shop: Shop) -> int:
    return inbound_requests(lab, shop.web_v1) + inbound_requests(lab, shop.web_v2)


# -- capture, both ways, TCP and HTTP -------------------------------------------------------

def test_meshed_to_meshed_http_goes_through_both_sidecars_with_the_callers_identity(lab: Lab, shop: Shop) -> None:
    captured_out = client_stat(lab, shop, "http.outbound_0.0.0.0_8080.downstream_rq_total")
    captured_in = web_inbound(lab, shop)
    result = get(lab, shop.client, shop.url("web"), 20)
    assert result["statuses"] == {"200": 20}, result
    assert result["callers"] == {spiffe(shop.ns, "client"): 20}  # the server's sidecar verified the client's certificate
    assert client_stat(lab, shop, "http.outbound_0.0.0.0_8080.downstream_rq_total") - captured_out == 20
    assert web_inbound(lab, shop) - captured_in == 20


def _app_connections(lab: Lab, pod: LabPod, port: int) -> int:
    """Connections `pod`'s sidecar has opened to its app on `port` (inbound cluster)."""
    return stat_sum(lab, pod, re.escape(f"cluster.inbound|{port}||.upstream_cx_total") + "$")


def test_meshed_to_meshed_tcp_goes_through_both_sidecars_over_tls(lab: Lab, shop: Shop) -> None:
    cluster = f"cluster.outbound|9000||{shop.host('web')}"
    handshakes = client_stat(lab, shop, f"{cluster}.ssl.handshake")
    proxied = client_stat(lab, shop, f"tcp.outbound|9000||{shop.host('web')}.downstream_cx_total")
    delivered = _app_connections(lab, shop.web_v1, 9000) + _app_connections(lab, shop.web_v2, 9000)
    assert tcp(lab, shop.client, f"web.{shop.ns}") in ("web-v1", "web-v2")
    assert client_stat(lab, shop, f"tcp.outbound|9000||{shop.host('web')}.downstream_cx_total") == proxied + 1
    assert client_stat(lab, shop, f"{cluster}.ssl.handshake") == handshakes + 1  # sent on over mTLS
    assert _app_connections(lab, shop.web_v1, 9000) + _app_connections(lab, shop.web_v2, 9000) == delivered + 1


def test_a_meshed_tcp_connection_the_server_closes_ends_on_both_sidecars(lab: Lab, shop: Shop) -> None:
    # The server app closes first; over mTLS its FIN becomes a close_notify (asyncio's TLS
    # cannot half-close), which the client's sidecar passes on as a FIN.
    assert tcp(lab, shop.client, f"web.{shop.ns}") in ("web-v1", "web-v2")
    eventually(lambda: client_stat(lab, shop, f"tcp.outbound|9000||{shop.host('web')}.downstream_cx_active") == 0,
               "the client's sidecar closed its side", timeout=10)
    open_to_apps = re.escape("cluster.inbound|9000||.upstream_cx_active") + "$"
    eventually(lambda: stat_sum(lab, shop.web_v1, open_to_apps) + stat_sum(lab, shop.web_v2, open_to_apps) == 0,
               "the server's sidecar closed its connection to the app", timeout=10)


def test_a_meshed_pod_reaches_a_plain_pod_over_http_and_tcp_in_plaintext(lab: Lab, shop: Shop) -> None:
    captured = client_stat(lab, shop, "http.outbound_0.0.0.0_8080.downstream_rq_total")
    result = get(lab, shop.client, shop.url("plain"), 10)
    assert result["statuses"] == {"200": 10} and result["callers"] == {"": 10}, result  # no client certificate
    assert client_stat(lab, shop, "http.outbound_0.0.0.0_8080.downstream_rq_total") - captured == 10
    assert tcp(lab, shop.client, f"plain.{shop.ns}") == "plain"
    assert client_stat(lab, shop, f"tcp.outbound|9000||{shop.host('plain')}.downstream_cx_total") >= 1
    assert client_stat(lab, shop, f"cluster.outbound|9000||{shop.host('plain')}.ssl.handshake") == 0


def test_http_to_an_address_no_service_names_passes_through_to_where_the_client_was_going(lab: Lab, shop: Shop) -> None:
    # Port 8080 is a mesh HTTP port, so the sidecar's HTTP listener takes the request; the
    # Host (a pod IP) matches no service, so Istio's route sends it to PassthroughCluster,
    # an ORIGINAL_DST cluster: the connection's original destination is the upstream.
    before = client_stat(lab, shop, "cluster.PassthroughCluster.upstream_rq_total")
    result = get(lab, shop.client, f"http://{shop.plain.ip}:8080/", 5)
    assert result["statuses"] == {"200": 5} and result["pods"] == {"plain": 5}, result
    assert client_stat(lab, shop, "cluster.PassthroughCluster.upstream_rq_total") - before == 5


def test_a_plain_pod_reaches_meshed_pods_through_their_cluster_ip_under_permissive(lab: Lab, shop: Shop) -> None:
    captured_in = web_inbound(lab, shop)
    result = get(lab, shop.plain_client, shop.url("web"), 10)
    assert result["statuses"] == {"200": 10} and result["callers"] == {"": 10}, result
    assert web_inbound(lab, shop) - captured_in == 10  # inbound capture handed every request to a sidecar
    delivered = _app_connections(lab, shop.web_v1, 9000) + _app_connections(lab, shop.web_v2, 9000)
    assert tcp(lab, shop.plain_client, f"web.{shop.ns}") in ("web-v1", "web-v2")
    assert _app_connections(lab, shop.web_v1, 9000) + _app_connections(lab, shop.web_v2, 9000) == delivered + 1


# -- mTLS on the wire -------------------------------------------------------------------------

def test_meshed_traffic_crosses_the_underlay_encrypted(lab: Lab, shop: Shop) -> None:
    capture = lab.capture_underlay("node-1", seconds=60)
    try:
        result = get(lab, shop.client, shop.url("web"), 50)
    finally:
        wire = capture.stop()
    assert result["statuses"] == {"200": 50}, result
    assert wire["vxlan_frames"] > 0 and wire["tcp_payload_segments"] >= 50, wire
    assert wire["plaintext_http_segments"] == 0, wire["samples"]


def test_the_same_capture_sees_plain_pods_http_in_clear(lab: Lab, shop: Shop) -> None:
    capture = lab.capture_underlay("node-1", seconds=60)
    try:
        result = get(lab, shop.plain_client, shop.url("plain"), 20)
    finally:
        wire = capture.stop()
    assert result["statuses"] == {"200": 20}, result
    assert wire["plaintext_http_segments"] >= 40, wire  # 20 requests and 20 responses


# -- routing and resilience, observed through captured traffic --------------------------------

def _subsets(shop: Shop, host: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": host.split(".")[0], "namespace": shop.ns},
            "spec": {"host": host, **extra}}


def _virtual_service(shop: Shop, host: str, http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": host.split(".")[0], "namespace": shop.ns}, "spec": {"hosts": [host], "http": http}}


def _delete(lab: Lab, shop: Shop, *kinds_and_names: tuple[str, str]) -> None:
    with lab.api() as api:
        for kind, name in kinds_and_names:
            api.delete(kind, shop.ns, name)


def _config_has(lab: Lab, pod: LabPod, text: str) -> bool:
    """Whether `pod`'s sidecar's config dump contains `text` (the config has arrived)."""
    done = lab.exec(pod, ["curl", "-s", "http://127.0.0.1:15000/config_dump"], capture_output=True)
    return text in done.stdout


def test_a_virtual_service_splits_requests_by_weight(lab: Lab, shop: Shop) -> None:
    host, requests, v2_share = shop.host("web"), 400, 0.2
    apply(lab, _subsets(shop, host, subsets=[{"name": "v1", "labels": {"version": "v1"}},
                                             {"name": "v2", "labels": {"version": "v2"}}]),
          _virtual_service(shop, host, [{"route": [
              {"destination": {"host": host, "subset": "v1"}, "weight": 80},
              {"destination": {"host": host, "subset": "v2"}, "weight": 20}]}]))
    try:
        eventually(lambda: _config_has(lab, shop.client, f"outbound|8080|v2|{host}"), "the client's routes split")
        result = get(lab, shop.client, shop.url("web"), requests)
    finally:
        _delete(lab, shop, ("VirtualService", "web"), ("DestinationRule", "web"))
    assert result["statuses"] == {"200": requests}, result
    v2 = result["pods"].get("web-v2", 0)
    # Each request is a Bernoulli trial: 4.5 standard deviations either side (p ~ 7e-6 of a false failure).
    bound = 4.5 * math.sqrt(requests * v2_share * (1 - v2_share))
    assert abs(v2 - requests * v2_share) <= bound, result["pods"]


def _make_flaky_bad_fail(lab: Lab, shop: Shop) -> None:
    assert curl_status(lab, shop.flaky_bad, "http://127.0.0.1:8080/fail", method="POST") == 200


def test_retries_turn_a_failing_endpoints_503s_into_answers(lab: Lab, shop: Shop) -> None:
    host = shop.host("flaky-retry")
    apply(lab, _virtual_service(shop, host, [{"route": [{"destination": {"host": host}}],
                                              "retries": {"attempts": 3, "retryOn": "5xx"}}]))
    try:
        eventually(lambda: _config_has(lab, shop.client, '"retry_on": "5xx"'), "the client has the retry policy")
        _make_flaky_bad_fail(lab, shop)
        retries = client_stat(lab, shop, f"cluster.outbound|8080||{host}.upstream_rq_retry")
        tried_bad = inbound_requests(lab, shop.flaky_bad)
        result = get(lab, shop.client, shop.url("flaky-retry"), 40)
    finally:
        _delete(lab, shop, ("VirtualService", "flaky-retry"))
    assert result["statuses"] == {"200": 40} and result["pods"] == {"flaky-ok": 40}, result
    failed = inbound_requests(lab, shop.flaky_bad) - tried_bad
    assert failed > 0  # the failing pod was tried (and answered 503) ...
    assert client_stat(lab, shop, f"cluster.outbound|8080||{host}.upstream_rq_retry") - retries == failed  # ... and each retried


def test_outlier_detection_ejects_a_failing_endpoint_and_it_gets_no_more_requests(lab: Lab, shop: Shop) -> None:
    host = shop.host("flaky-eject")
    cluster = f"cluster.outbound|8080||{host}"
    apply(lab, _subsets(shop, host, trafficPolicy={"outlierDetection": {
              "consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "60s", "maxEjectionPercent": 100}}),
          _virtual_service(shop, host, [{"route": [{"destination": {"host": host}}],
                                         "retries": {"attempts": 3, "retryOn": "5xx"}}]))
    try:
        eventually(lambda: _config_has(lab, shop.client, '"outlier_detection"'), "the client has outlier detection")
        _make_flaky_bad_fail(lab, shop)
        first = get(lab, shop.client, shop.url("flaky-eject"), 30)
        ejected = stats(lab, shop.client, re.escape(f"{cluster}.outlier_detection."))
        tried_bad = inbound_requests(lab, shop.flaky_bad)
        later = get(lab, shop.client, shop.url("flaky-eject"), 40)
        got_while_ejected = inbound_requests(lab, shop.flaky_bad) - tried_bad
    finally:
        _delete(lab, shop, ("VirtualService", "flaky-eject"), ("DestinationRule", "flaky-eject"))
    assert first["statuses"] == {"200": 30} and later["statuses"] == {"200": 40}, (first, later)
    assert ejected[f"{cluster}.outlier_detection.ejections_active"] == 1, ejected
    assert ejected[f"{cluster}.outlier_detection.ejections_consecutive_5xx"] >= 1, ejected
    assert got_while_ejected == 0


# -- policy ----------------------------------------------------------------------------------

def test_network_policy_drops_meshed_traffic_it_does_not_allow(lab: Lab, shop: Shop) -> None:
    # A new client: the policy decides new connections (the shop client's sidecar holds
    # established ones, which policy leaves alone, as Kubernetes' implementations do).
    newcomer = client(lab, shop.ns, "newcomer", "node-1")
    apply(lab, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "web-from-friends", "namespace": shop.ns},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}]}]}})
    try:
        eventually(lambda: curl_status(lab, newcomer, shop.url("web"), timeout=2) != 200,
                   "the policy drops the newcomer's connections")
        lab.set_pod_labels(shop.ns, "newcomer", {"role": "friend"})
        eventually(lambda: curl_status(lab, newcomer, shop.url("web"), timeout=2) == 200,
                   "the policy lets the newcomer in once it is a friend")
    finally:
        _delete(lab, shop, ("NetworkPolicy", "web-from-friends"))
        lab.delete_pod(shop.ns, "newcomer")
