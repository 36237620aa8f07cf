"""Everything tulle-control generates for a captured sidecar — including the 15001 and
15006 capture listeners, which a test cannot bind on a shared host — is accepted by a
real Envoy (`envoy --mode validate`: full config validation, no ports bound)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from control.xds.mesh import MeshSnapshot
from control.xds.resources import CLUSTER, LISTENER
from control.xds.sidecar import ProxyProfile, TranslationMemo, proxy_resources
from tests.xds.harness import ENVOY
from tests.xds.test_translation import DR, docs, vs


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_real_envoy_accepts_the_captured_sidecar_config(tmp_path: Path) -> None:
    rule = {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                                                           {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}],
            "retries": {"attempts": 3, "perTryTimeout": "1s"}, "timeout": "5s"}
    hashed = {**DR, "spec": {**DR["spec"], "subsets": [
        *DR["spec"]["subsets"],
        {"name": "sticky", "labels": {"version": "v1"},
         "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "ttl": "60s"}}}}}]}}
    sticky = {"match": [{"uri": {"prefix": "/cart"}}], "route": [{"destination": {"host": "reviews", "subset": "sticky"}}]}
    mesh = MeshSnapshot.from_documents(docs(hashed, vs([sticky, rule])))
    resources = proxy_resources(mesh, ProxyProfile(False, "shop", intercept=True), TranslationMemo())
    ads = {"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
           "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
               "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
               "explicit_http_config": {"http2_protocol_options": {}}}},
           "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
               {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15010}}}}]}]}}
    bootstrap: dict[str, Any] = {
        "node": {"id": "sidecar~10.244.1.4~reviews-v1.shop~shop.svc.cluster.local", "cluster": "reviews"},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {
            "listeners": [_json(r.message) for r in resources if r.type_url == LISTENER],
            "clusters": [ads, *(_json(r.message) for r in resources if r.type_url == CLUSTER)],
        },
    }
    names = {li["name"] for li in bootstrap["static_resources"]["listeners"]}
    assert {"virtualOutbound", "virtualInbound", "0.0.0.0_9080", "10.96.1.5_5432"} <= names
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    done = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
