"""The config API over gRPC (proto/tulle/config/v1): status codes and messages as the
.proto documents them, watch from a revision, status. The control plane runs in-process
on an ephemeral port with a SQLite store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from control.plane import ControlPlane, ControlPlaneConfig
from proto.tulle.config.v1 import config_pb2, config_pb2_grpc

Stub = Any  # the generated stub class is untyped (proto.* is not type-checked)


def run_plane(tmp_path: Path, scenario: Callable[[Stub, ControlPlane], Awaitable[None]]) -> None:
    async def main() -> None:
        plane = ControlPlane(ControlPlaneConfig(state_dir=tmp_path, socket=tmp_path / "control.sock",
                                                listen=["127.0.0.1:0"]))
        await plane.start()
        try:
            async with grpc.aio.insecure_channel(plane.addresses[0]) as channel:
                await asyncio.wait_for(scenario(config_pb2_grpc.ConfigStub(channel), plane), 30)
        finally:
            await plane.stop()

    asyncio.run(main())


def policy(name: str, **meta: Any) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": name, **meta}, "spec": {"podSelector": {}}})


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


def test_apply_returns_stored_documents_with_outcomes_and_revision(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        response = await stub.Apply(config_pb2.ApplyRequest(documents=[policy("a"), policy("b")]))
        assert [r.outcome for r in response.results] == [config_pb2.ApplyResult.CREATED] * 2
        stored = json.loads(response.results[0].document)
        assert stored["metadata"]["resourceVersion"] == str(response.revision)
        again = await stub.Apply(config_pb2.ApplyRequest(documents=[policy("a")]))
        assert again.results[0].outcome == config_pb2.ApplyResult.UNCHANGED

    run_plane(tmp_path, scenario)


def test_dry_run_validates_but_stores_nothing(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        response = await stub.Apply(config_pb2.ApplyRequest(documents=[policy("dry")], dry_run=True))
        assert response.results[0].outcome == config_pb2.ApplyResult.CREATED
        ref = config_pb2.ObjectRef(kind="netpol", name="dry")
        assert (await status_of(stub.Get(config_pb2.GetRequest(ref=ref))))[0] == grpc.StatusCode.NOT_FOUND

    run_plane(tmp_path, scenario)


def test_errors_travel_as_the_documented_status_codes(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        bad = json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                          "spec": {"ports": [{"port": 0}]}})
        code, message = await status_of(stub.Apply(config_pb2.ApplyRequest(documents=[bad])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message == 'The Service "s" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive'
        code, _ = await status_of(stub.Apply(config_pb2.ApplyRequest(documents=["{not json"])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        await stub.Apply(config_pb2.ApplyRequest(documents=[policy("p", resourceVersion="0")]))
        code, message = await status_of(stub.Apply(config_pb2.ApplyRequest(documents=[policy("p", resourceVersion="0")])))
        assert (code, message) == (grpc.StatusCode.ALREADY_EXISTS, 'networkpolicies.networking.k8s.io "p" already exists')
        code, message = await status_of(stub.Apply(config_pb2.ApplyRequest(documents=[policy("p", resourceVersion="1")])))
        assert code == grpc.StatusCode.ABORTED and message.startswith("Operation cannot be fulfilled")
        code, _ = await status_of(stub.List(config_pb2.ListRequest(kind="gateways")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, _ = await status_of(stub.List(config_pb2.ListRequest(kind="pods", label_selector="a in (")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        ref = config_pb2.ObjectRef(kind="Pod", name="absent")
        code, message = await status_of(stub.Delete(config_pb2.DeleteRequest(ref=ref)))
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, 'pods "absent" not found')

    run_plane(tmp_path, scenario)


def test_a_bad_admin_network_policy_is_refused_with_its_field_path_and_nothing_is_stored(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        good = json.dumps({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                           "metadata": {"name": "good"}, "spec": {"priority": 1, "subject": {"namespaces": {}}}})
        bad = json.dumps({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                          "metadata": {"name": "bad"}, "spec": {"priority": 1, "subject": {"namespaces": {}}, "egress": [
                              {"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]}]}})
        code, message = await status_of(stub.Apply(config_pb2.ApplyRequest(documents=[good, bad])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message.startswith('The AdminNetworkPolicy "bad" is invalid: spec.egress[0].to[0].networks[0]: Invalid value')
        listed = await stub.List(config_pb2.ListRequest(kind="anp"))
        assert list(listed.documents) == []  # the good one of the batch is not stored either

    run_plane(tmp_path, scenario)


def test_watch_streams_changes_after_a_revision_in_order(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        listed = await stub.List(config_pb2.ListRequest(kind="NetworkPolicy"))
        stream = stub.Watch(config_pb2.WatchRequest(kinds=["netpol"], revision=listed.revision))
        await stub.Apply(config_pb2.ApplyRequest(documents=[policy("w")]))
        await stub.Apply(config_pb2.ApplyRequest(documents=[policy("w", labels={"x": "y"})]))
        await stub.Delete(config_pb2.DeleteRequest(ref=config_pb2.ObjectRef(kind="netpol", name="w")))
        seen = []
        async for event in stream:
            seen.append((event.type, json.loads(event.document)["metadata"]["name"], event.revision))
            if len(seen) == 3:
                break
        stream.cancel()
        assert [t for t, _, _ in seen] == [config_pb2.WatchEvent.ADDED, config_pb2.WatchEvent.MODIFIED,
                                            config_pb2.WatchEvent.DELETED]
        revisions = [r for _, _, r in seen]
        assert revisions == sorted(revisions) and revisions[0] > listed.revision

    run_plane(tmp_path, scenario)


def test_watch_from_a_compacted_revision_is_out_of_range(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        first = await stub.Apply(config_pb2.ApplyRequest(documents=[policy("c")]))
        last = await stub.Apply(config_pb2.ApplyRequest(documents=[policy("c", labels={"v": "2"})]))
        await plane.registry.store.compact(last.revision)
        stream = stub.Watch(config_pb2.WatchRequest(kinds=["netpol"], revision=first.revision - 1))
        code, message = await status_of(stream.read())
        assert code == grpc.StatusCode.OUT_OF_RANGE and "list again" in message

    run_plane(tmp_path, scenario)


def test_status_reports_version_store_revision_and_object_counts(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        applied = await stub.Apply(config_pb2.ApplyRequest(documents=[policy("s1"), policy("s2")]))
        status = await stub.Status(config_pb2.StatusRequest())
        assert status.store == f"sqlite:{tmp_path / 'tulle.db'}"
        assert status.revision >= applied.revision
        assert dict(status.objects) == {"Namespace": 1, "NetworkPolicy": 2}
        assert status.version

    run_plane(tmp_path, scenario)


def test_the_unix_socket_is_for_its_owner_only(tmp_path: Path) -> None:
    async def scenario(stub: Stub, plane: ControlPlane) -> None:
        assert (tmp_path / "control.sock").stat().st_mode & 0o777 == 0o600
        async with grpc.aio.insecure_channel(f"unix:{tmp_path / 'control.sock'}") as channel:
            status = await config_pb2_grpc.ConfigStub(channel).Status(config_pb2.StatusRequest())
        assert status.version

    run_plane(tmp_path, scenario)
