"""Everything tulle-control generates for a meshed pod's sidecar — capture listeners
15001/15006 with original_dst and tls_inspector, per-port TLS and plaintext chains with
SDS-fed DownstreamTlsContexts, RBAC filters, XFCC, auto-mTLS transport_socket_matches,
ORIGINAL_DST passthrough clusters — loads in tulle-proxy (`--mode validate`, as
`envoy --mode validate`) without an unsupported-field error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from control.xds.resources import CLUSTER, LISTENER
from tests.tls.tulle_sidecar import TULLE
from tests.xds.test_security_translation import ap, pa, sidecar_config


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def grpc_cluster(name: str, address: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "http2_protocol_options": {},
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": address}}]}]}}


def validate(tmp_path: Path, *documents: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    errors: list[str] = []
    resources = sidecar_config(*documents, errors=errors).values()
    assert errors == []
    bootstrap = {
        "node": {"id": "sidecar~10.244.1.4~reviews-v1.shop~shop.svc.cluster.local", "cluster": "reviews"},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {
            "listeners": [_json(r.message) for r in resources if r.type_url == LISTENER],
            "clusters": [grpc_cluster("xds-grpc", {"socket_address": {"address": "127.0.0.1", "port_value": 15010}}),
                         grpc_cluster("sds-grpc", {"pipe": {"path": str(tmp_path / "sds.sock")}}),
                         *(_json(r.message) for r in resources if r.type_url == CLUSTER)],
        },
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    return subprocess.run([str(TULLE), "--mode", "validate", "-c", str(path)], capture_output=True, text=True,
                          timeout=60)


ALLOW = ap("frontend", "ALLOW", [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"],
                                                       "namespaces": ["shop"]}}],
                                  "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"], "ports": ["8080"]}}],
                                  "when": [{"key": "request.headers[x-user]", "values": ["alice"]}]}])
DENY = ap("no-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin*"], "hosts": ["reviews.shop"]}}]},
                               {"from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "notPrincipals": ["*/sa/ops"]}}]}])


def test_a_strict_meshed_sidecar_config_with_authorization_loads(tmp_path: Path) -> None:
    done = validate(tmp_path, pa("default", "shop", "STRICT"), ALLOW, DENY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_a_permissive_sidecar_config_with_a_disabled_port_loads(tmp_path: Path) -> None:
    done = validate(tmp_path, pa("default", "shop", "PERMISSIVE", ports={"5432": "DISABLE"}), ALLOW)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_the_default_sidecar_config_loads(tmp_path: Path) -> None:
    done = validate(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
