"""An HTTP/1.1 server on a thread, as a test's app or upstream: every GET is answered 200
with the body `answer(request)` makes, and counted in `hits`. It binds `host`:`port` (port 0:
a free one, then in `port`), behind TLS when given a server context, and `close()` stops it
and its connections' threads."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Callable
from typing import Any

Answer = Callable[[http.server.BaseHTTPRequestHandler], bytes]


class AnsweringServer:
    def __init__(self, answer: Answer, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.hits = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                body = answer(self)
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler, bind_and_activate=False)
        self._httpd.daemon_threads = True
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        try:
            self._httpd.server_bind()
            self._httpd.server_activate()
        except OSError:
            self._httpd.server_close()
            raise
        self.host, self.port = host, int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
