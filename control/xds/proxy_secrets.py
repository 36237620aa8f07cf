"""`meshctl proxy-config NODE secrets`: the certificates a sidecar holds, read from the
proxy itself (its admin `/config_dump?resource=dynamic_active_secrets`, Envoy's format;
private keys are redacted there), since secrets come from the node agent's SDS server
and never pass through tulle-control.

For each secret: its name, what it is (the workload certificate or the trust bundle),
the SPIFFE ID (URI SAN), the serial number, not-before and not-after, and the version;
for a trust bundle, each root's subject and expiry.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from cryptography import x509

DEFAULT_ADMIN = "127.0.0.1:15000"


def fetch_secrets(admin: str) -> dict[str, Any]:
    url = f"http://{admin}/config_dump?resource=dynamic_active_secrets"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            dump: dict[str, Any] = json.loads(r.read())
            return dump
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConnectionError(f"cannot read secrets from the proxy admin at {admin}: {e}") from None


def node_id(admin: str) -> str:
    """The node id the proxy at `admin` runs as (Envoy's /server_info)."""
    try:
        with urllib.request.urlopen(f"http://{admin}/server_info", timeout=10) as r:
            return str(json.loads(r.read()).get("node", {}).get("id", ""))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConnectionError(f"cannot reach the proxy admin at {admin}: {e}") from None


def _pem_certificates(source: dict[str, Any]) -> list[x509.Certificate]:
    if "inline_bytes" in source:
        data = base64.b64decode(source["inline_bytes"])
    elif "inline_string" in source:
        data = source["inline_string"].encode()
    else:
        return []
    return x509.load_pem_x509_certificates(data)


def _spiffe_id(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "-"
    return ", ".join(san.get_values_for_type(x509.UniformResourceIdentifier)) or "-"


def secret_rows(dump: dict[str, Any]) -> list[list[str]]:
    rows = [["NAME", "TYPE", "IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER", "VERSION"]]
    # With `?resource=`, Envoy lists the DynamicSecret entries themselves; without it,
    # a SecretsConfigDump holds them.
    entries = [e for c in dump.get("configs") or [] for e in c.get("dynamic_active_secrets", [c])]
    for entry in entries:
        secret = entry.get("secret", {})
        name, version = secret.get("name", entry.get("name", "?")), str(entry.get("version_info", ""))
        if "tls_certificate" in secret:
            chain = _pem_certificates(secret["tls_certificate"].get("certificate_chain", {}))
            if chain:
                leaf = chain[0]
                rows.append([name, "Cert Chain", _spiffe_id(leaf), format(leaf.serial_number, "x"),
                             leaf.not_valid_before_utc.isoformat(), leaf.not_valid_after_utc.isoformat(), version])
        elif "validation_context" in secret:
            for root in _pem_certificates(secret["validation_context"].get("trusted_ca", {})):
                rows.append([name, "Trust Bundle", root.subject.rfc4514_string(), format(root.serial_number, "x"),
                             root.not_valid_before_utc.isoformat(), root.not_valid_after_utc.isoformat(), version])
    return rows
