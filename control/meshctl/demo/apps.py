"""The demo's apps, run inside lab pods: `python -m control.meshctl.demo.apps ROLE ...`.

They know nothing of the mesh: they speak plain HTTP/1.1 to names, and what they see of
it is what an app behind a sidecar sees (the x-forwarded-client-cert header).

- `catalog POD VERSION`: HTTP on :8080. `GET /` answers JSON {pod, version, caller,
  self}: `caller` and `self` are the URI and By fields of x-forwarded-client-cert, i.e.
  the SPIFFE IDs the pod's sidecar verified and presented. `POST /fail` makes it answer
  503 from then on: the failing instance the demo's outlier detection ejects.
- `frontend`: HTTP on :8080. `GET /drive?n=N` makes N requests to
  http://catalog.shop:8080/ over a keep-alive connection (a new one after an error) and
  answers a JSON summary: statuses, which pods and versions served, the identities each
  side saw. The demo calls it on the pod's loopback, which capture leaves alone.
"""

from __future__ import annotations

import http.client
import http.server
import json
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

PORT = 8080
CATALOG = ("catalog.shop", 8080)
REQUEST_TIMEOUT = 5.0


def client_cert_fields(header: str) -> dict[str, str]:
    """The first element of an x-forwarded-client-cert value, as {key: value}
    (Envoy's format: `By=…;Hash=…;URI=…`, elements separated by commas)."""
    fields = {}
    for part in header.split(",", 1)[0].split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def catalog(pod: str, version: str) -> None:
    failing = threading.Event()

    class Catalog(_Handler):
        def do_GET(self) -> None:
            cert = client_cert_fields(self.headers.get("x-forwarded-client-cert", ""))
            body = {"pod": pod, "version": version, "caller": cert.get("URI", ""), "self": cert.get("By", "")}
            self.reply(503 if failing.is_set() else 200, body)

        def do_POST(self) -> None:
            if self.path == "/fail":
                failing.set()
            self.reply(200, {"pod": pod, "failing": failing.is_set()})

    http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Catalog).serve_forever()


def drive(requests: int) -> dict[str, Any]:
    """`requests` sequential GETs to the catalog Service by name, through the sidecar."""
    statuses: Counter[int] = Counter()
    pods: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    callers: Counter[str] = Counter()
    servers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    connection: http.client.HTTPConnection | None = None
    started = time.monotonic()
    for _ in range(requests):
        try:
            if connection is None:
                connection = http.client.HTTPConnection(*CATALOG, timeout=REQUEST_TIMEOUT)
            connection.request("GET", "/")
            reply = connection.getresponse()
            body = json.loads(reply.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            errors[type(exc).__name__] += 1
            if connection is not None:
                connection.close()
            connection = None
            continue
        statuses[reply.status] += 1
        if reply.status == 200:
            pods[body.get("pod", "?")] += 1
            versions[body.get("version", "?")] += 1
        callers[body.get("caller") or "(none: plaintext)"] += 1
        servers[body.get("self") or "(none: plaintext)"] += 1
    if connection is not None:
        connection.close()
    return {"requests": requests, "seconds": round(time.monotonic() - started, 3), "statuses": dict(statuses),
            "pods": dict(pods), "versions": dict(versions), "callers": dict(callers),
            "servers": dict(servers), "errors": dict(errors)}


def frontend() -> None:
    class Frontend(_Handler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/drive":
                self.reply(404, {"error": f"no {url.path}; try /drive?n=100"})
                return
            try:
                n = int(parse_qs(url.query).get("n", ["100"])[0])
            except ValueError:
                self.reply(400, {"error": "n must be a number"})
                return
            self.reply(200, drive(max(0, min(n, 10_000))))

    http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Frontend).serve_forever()


def main(argv: list[str]) -> int:
    if argv[:1] == ["catalog"] and len(argv) == 3:
        catalog(argv[1], argv[2])
    elif argv == ["frontend"]:
        frontend()
    else:
        print("usage: apps catalog POD VERSION | apps frontend", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
