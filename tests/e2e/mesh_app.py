"""The end-to-end tests' app, run inside lab pods by path (`python mesh_app.py ROLE ...`).

It knows nothing of the mesh: it speaks plain HTTP/1.1 and TCP to names and addresses, as
an app behind a sidecar does, and reports what it saw.

- `serve POD`: HTTP on :8080 and a client-first TCP service on :9000.
  `GET /` answers JSON {pod, caller, by}: the URI and By fields of the
  x-forwarded-client-cert header (the SPIFFE IDs the pod's sidecar verified and
  presented; empty when the request came in plaintext). `GET /slow?ms=N` answers after N
  ms. `POST /fail` makes `GET /` answer 503 from then on. TCP: after the client's first
  bytes, answers "POD" and closes. SIGTERM is graceful, as a well-behaved app's is: stop
  accepting, finish the requests in flight, then exit.
- `get URL N`: N sequential GETs over one keep-alive connection (a new one after an
  error); prints a JSON summary: statuses, errors, pods that answered, callers seen.
- `load URL SECONDS CLIENTS`: CLIENTS keep-alive clients each sending GETs back to back
  for SECONDS; prints the same summary (bounded in time: every request has a timeout).
- `tcp HOST PORT`: one client-first TCP exchange; prints the answer.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from control.meshctl.demo.apps import client_cert_fields

HTTP_PORT = 8080
TCP_PORT = 9000
TIMEOUT = 5.0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handlers: requests in flight finish
    block_on_close = True


def serve(pod: str) -> None:
    failing = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with lock:
                idle.add(self.request)

        def finish(self) -> None:
            with lock:
                idle.discard(self.request)
            super().finish()

        def parse_request(self) -> bool:
            with lock:  # a request line arrived: this connection is busy until the reply
                idle.discard(self.request)
            return super().parse_request()

        def reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            if stopping.is_set():
                self.send_header("connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
            with lock:
                if stopping.is_set():
                    return
                idle.add(self.request)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/slow":
                time.sleep(int(parse_qs(url.query).get("ms", ["0"])[0]) / 1000)
            cert = client_cert_fields(self.headers.get("x-forwarded-client-cert", ""))
            body = {"pod": pod, "caller": cert.get("URI", ""), "by": cert.get("By", "")}
            self.reply(503 if failing.is_set() and url.path == "/" else 200, body)

        def do_POST(self) -> None:
            if self.path == "/fail":
                failing.set()
            self.reply(200, {"pod": pod, "failing": failing.is_set()})

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(TIMEOUT)
            if self.request.recv(100):
                self.request.sendall(pod.encode())

    stopping = threading.Event()
    lock = threading.Lock()
    idle: set[socket.socket] = set()  # keep-alive connections waiting for their next request
    web = _Server(("0.0.0.0", HTTP_PORT), Handler)
    tcp = socketserver.ThreadingTCPServer(("0.0.0.0", TCP_PORT), Tcp)
    tcp.daemon_threads = True
    threading.Thread(target=tcp.serve_forever, daemon=True).start()

    def on_term(signum: int, frame: object) -> None:
        stopping.set()
        with lock:  # as Go's Server.Shutdown: idle connections close now, busy ones after their reply
            for connection in idle:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            idle.clear()
        # shutdown() waits for serve_forever, which runs in this thread: ask from another.
        threading.Thread(target=web.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    print("serving", flush=True)
    web.serve_forever()
    web.server_close()  # joins the handler threads: in-flight requests get their answers


class Summary:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.pods: Counter[str] = Counter()
        self.callers: Counter[str] = Counter()
        self.lock = threading.Lock()

    def record(self, status: int, body: dict[str, Any]) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.pods[body.get("pod", "?")] += 1
            self.callers[body.get("caller", "")] += 1

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1

    def as_json(self, seconds: float) -> str:
        return json.dumps({"requests": sum(self.statuses.values()) + sum(self.errors.values()),
                           "seconds": round(seconds, 3), "statuses": dict(self.statuses),
                           "errors": dict(self.errors), "pods": dict(self.pods), "callers": dict(self.callers)})


def _client(url: str, summary: Summary, keep_going: Any) -> None:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection: http.client.HTTPConnection | None = None
    while keep_going():
        try:
            if connection is None:
                connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=TIMEOUT)
            connection.request("GET", path)
            reply = connection.getresponse()
            data = reply.read()
            try:
                body = json.loads(data or b"{}")
            except ValueError:
                body = {}
            summary.record(reply.status, body if isinstance(body, dict) else {})
            if reply.will_close:
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as exc:
            summary.error(exc)
            if connection is not None:
                connection.close()
            connection = None
    if connection is not None:
        connection.close()


def get(url: str, count: int) -> None:
    summary = Summary()
    left = [count]

    def keep_going() -> bool:
        left[0] -= 1
        return left[0] >= 0

    started = time.monotonic()
    _client(url, summary, keep_going)
    print(summary.as_json(time.monotonic() - started))


def load(url: str, seconds: float, clients: int) -> None:
    summary = Summary()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(url, summary, lambda: time.monotonic() < deadline))
               for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(summary.as_json(time.monotonic() - started))


def tcp(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
        connection.sendall(b"who?")
        print(connection.recv(100).decode())


def main(argv: list[str]) -> int:
    role, args = (argv[0], argv[1:]) if argv else ("", [])
    if role == "serve" and len(args) == 1:
        serve(args[0])
    elif role == "get" and len(args) == 2:
        get(args[0], int(args[1]))
    elif role == "load" and len(args) == 3:
        load(args[0], float(args[1]), int(args[2]))
    elif role == "tcp" and len(args) == 2:
        tcp(args[0], int(args[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
