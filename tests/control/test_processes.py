"""tulle-control as a process: no acknowledged write is lost to kill -9 (SQLite), and two
replicas on one etcd serve the same data."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path

from control.meshctl.client import ConfigClient, RequestError, UnreachableError
from tests.control.control_process import control_process, start_control
from tests.control.etcd_server import EtcdServer


def namespace(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"stream": "kill-9"}}}


def test_kill_9_during_a_stream_of_applies_loses_no_acknowledged_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    control = start_control(state)
    acknowledged: list[str] = []
    lock = threading.Lock()

    def writer(worker: int) -> None:
        client = ConfigClient(control.address, timeout=5)
        try:
            for i in range(10_000):
                name = f"w{worker}-{i}"
                try:
                    client.apply([namespace(name)])
                except (UnreachableError, RequestError):
                    return
                with lock:
                    acknowledged.append(name)
        finally:
            client.close()

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    try:
        for thread in writers:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        control.kill()
        for thread in writers:
            thread.join(30)
        with lock:
            acked = set(acknowledged)
        assert len(acked) >= 200

        with control_process(state) as restarted:
            client = ConfigClient(restarted.address)
            stored, _ = client.list("Namespace", label_selector="stream=kill-9")
            client.close()
        names = {o["metadata"]["name"] for o in stored}
        assert acked <= names, f"lost {sorted(acked - names)[:10]}"
    finally:
        control.stop()


def test_two_replicas_on_one_etcd_see_each_others_writes_within_a_second(tmp_path: Path, etcd: EtcdServer) -> None:
    store = f"etcd://{etcd.endpoint}/replicas-{uuid.uuid4().hex[:8]}"
    with control_process(tmp_path / "a", "--store", store) as a, control_process(tmp_path / "b", "--store", store) as b:
        writer, reader = ConfigClient(a.address), ConfigClient(b.address)
        try:
            _, revision = reader.list("NetworkPolicy")
            events: queue.Queue[tuple[str, dict[str, object]]] = queue.Queue()
            watch = reader.watch(["NetworkPolicy"], revision=revision)

            def follow() -> None:
                for event_type, obj, _ in watch:
                    events.put((event_type, obj))

            threading.Thread(target=follow, daemon=True).start()

            policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": "shared"}, "spec": {"podSelector": {}}}
            [result], _ = writer.apply([policy])
            event_type, seen = events.get(timeout=1.0)
            assert event_type == "ADDED" and seen == result.object
            assert reader.get("NetworkPolicy", "default", "shared") == result.object

            # Derived state computed by either replica's controller reaches both.
            writer.apply([
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                 "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}},
                 "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"podIP": "10.244.0.8"}},
            ])
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                try:
                    endpoints = reader.get("Endpoints", "default", "web")
                except RequestError:
                    endpoints = {}
                if endpoints.get("subsets"):
                    break
                time.sleep(0.02)
            assert endpoints["subsets"][0]["addresses"][0]["ip"] == "10.244.0.8"

            reader.delete("NetworkPolicy", "default", "shared")
            deadline = time.monotonic() + 1.0
            while writer.list("NetworkPolicy")[0] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert writer.list("NetworkPolicy")[0] == []
        finally:
            writer.close()
            reader.close()
