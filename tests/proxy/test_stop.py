"""tulle-proxy stopped with requests in flight exits without error reports: a stop is not an
error."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.proxy.running import bootstrap, free_port, running_proxy, silent_upstream

# a cluster of one connection at most, so a second request waits for it
ONE_CONNECTION = "    circuit_breakers: {thresholds: [{max_connections: 1}]}"


def test_a_stop_with_requests_in_flight_reports_no_error(tmp_path: Path) -> None:
    listener = free_port()
    with silent_upstream() as upstream:
        clients: list[socket.socket] = []
        try:
            with running_proxy("tulle", bootstrap(listener, upstream, cluster_extra=ONE_CONNECTION), listener, tmp_path):
                for index in range(2):   # one waits for its response, one for a connection
                    client = socket.create_connection(("127.0.0.1", listener), timeout=2)
                    client.sendall(f"GET /{index} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
                    clients.append(client)
                time.sleep(0.5)
        finally:
            for client in clients:
                client.close()
    log = (tmp_path / "tulle.log").read_text()
    assert "Traceback" not in log and "Error" not in log, log
