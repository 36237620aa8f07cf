"""The registry's contract (control/registry.py) on both stores: apply, get, list,
delete and watch for every kind; optimistic concurrency; all-or-nothing applies;
server-owned metadata; cluster IPs."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from control.registry import (
    AlreadyExistsError,
    InvalidDocumentsError,
    NotFoundError,
    ObjectConflictError,
    Registry,
    WatchEvent,
)
from control.store import CompactedError, Store, TransactionTooLargeError
from tests.control.conftest import StoreFactory
from tests.control.etcd_server import EtcdServer
from tests.control.test_validation import VALID

SERVER_OWNED = ("uid", "resourceVersion", "creationTimestamp", "generation")


def user_view(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for key in SERVER_OWNED:
        out["metadata"].pop(key, None)
    return out


def policy(name: str, app: str = "web", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, **meta}, "spec": {"podSelector": {"matchLabels": {"app": app}}}}


async def registry_on(store: Store) -> Registry:
    registry = Registry(store)
    await registry.ensure_namespace("default")
    return registry


async def take(events: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    return [await asyncio.wait_for(anext(events), 5) for _ in range(n)]


@pytest.mark.parametrize("document", VALID, ids=[d["kind"] for d in VALID])
def test_every_kind_round_trips_through_apply_get_list_watch_and_delete(stores: StoreFactory, document: dict[str, Any]) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        kind = document["kind"]
        start = await store.revision()
        events = registry.watch([kind], since=start)
        [result], revision = await registry.apply([document])
        assert result.outcome == "created"
        namespace = result.object["metadata"].get("namespace", "")
        got = await registry.get(kind, namespace, "x" if kind != "BaselineAdminNetworkPolicy" else "default")
        assert got == result.object
        assert got["metadata"]["resourceVersion"] == str(revision)
        for field in ("spec", "status", "subsets"):
            if field in document and not (kind == "Service" and field == "spec"):
                assert got[field] == document[field]
        listed, _ = await registry.list(kind)
        assert got in listed
        await registry.delete(kind, namespace, got["metadata"]["name"])
        added, gone = await take(events, 2)
        assert (added.type, added.object) == ("ADDED", got)
        assert gone.type == "DELETED" and user_view(gone.object) == user_view(got)
        with pytest.raises(NotFoundError):
            await registry.get(kind, namespace, got["metadata"]["name"])
        await events.aclose()  # type: ignore[attr-defined]

    stores.run(scenario)


def test_server_owns_uid_creation_time_generation_and_resource_version(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        sent = policy("p", uid="forged", generation=99, creationTimestamp="1970-01-01T00:00:00Z")
        [created], _ = await registry.apply([sent])
        meta = created.object["metadata"]
        assert meta["uid"] != "forged" and meta["generation"] == 1 and meta["creationTimestamp"] != "1970-01-01T00:00:00Z"
        [same], _ = await registry.apply([policy("p")])
        assert same.outcome == "unchanged" and same.object == created.object
        [changed], _ = await registry.apply([policy("p", app="db")])
        assert changed.outcome == "configured"
        assert changed.object["metadata"]["uid"] == meta["uid"]
        assert changed.object["metadata"]["generation"] == 2
        assert int(changed.object["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
        [relabelled], _ = await registry.apply([policy("p", app="db", labels={"team": "a"})])
        assert relabelled.object["metadata"]["generation"] == 2  # metadata is not the spec

    stores.run(scenario)


def test_apply_with_a_stale_resource_version_is_a_conflict(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        [first], _ = await registry.apply([policy("p")])
        version = first.object["metadata"]["resourceVersion"]
        await registry.apply([policy("p", app="db", resourceVersion=version)])
        with pytest.raises(ObjectConflictError, match=re.escape('Operation cannot be fulfilled on networkpolicies.networking.k8s.io "p"')):
            await registry.apply([policy("p", app="cache", resourceVersion=version)])
        assert (await registry.get("netpol", "default", "p"))["spec"]["podSelector"]["matchLabels"] == {"app": "db"}

    stores.run(scenario)


def test_resource_version_zero_means_create_only(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        await registry.apply([policy("p", resourceVersion="0")])
        with pytest.raises(AlreadyExistsError, match=re.escape('networkpolicies.networking.k8s.io "p" already exists')):
            await registry.apply([policy("p", app="db", resourceVersion="0")])

    stores.run(scenario)


def test_delete_with_a_stale_resource_version_is_a_conflict(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        [first], _ = await registry.apply([policy("p")])
        await registry.apply([policy("p", app="db")])
        with pytest.raises(ObjectConflictError):
            await registry.delete("NetworkPolicy", "default", "p", first.object["metadata"]["resourceVersion"])
        await registry.get("NetworkPolicy", "default", "p")

    stores.run(scenario)


def test_a_multi_document_apply_with_one_invalid_document_stores_nothing(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        before = await store.revision()
        bad = policy("bad")
        bad["spec"]["ingress"] = [{"ports": [{"port": 70000}]}]
        with pytest.raises(InvalidDocumentsError, match=r'The NetworkPolicy "bad" is invalid: spec.ingress\[0\].ports\[0\].port'):
            await registry.apply([policy("good-1"), bad, policy("good-2")])
        assert await store.revision() == before
        assert (await registry.list("NetworkPolicy"))[0] == []

    stores.run(scenario)


def test_a_multi_document_apply_with_one_conflict_stores_nothing(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        await registry.apply([policy("taken", resourceVersion="0")])
        with pytest.raises(AlreadyExistsError):
            await registry.apply([policy("new"), policy("taken", resourceVersion="0")])
        with pytest.raises(NotFoundError):
            await registry.get("NetworkPolicy", "default", "new")

    stores.run(scenario)


def test_a_multi_document_apply_is_one_revision(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        results, revision = await registry.apply([policy("a"), policy("b")])
        assert [r.object["metadata"]["resourceVersion"] for r in results] == [str(revision)] * 2

    stores.run(scenario)


def test_objects_need_their_namespace_unless_it_comes_in_the_same_apply(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        with pytest.raises(NotFoundError, match='namespaces "prod" not found'):
            await registry.apply([policy("p", namespace="prod")])
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
        await registry.apply([namespace, policy("p", namespace="prod")])
        assert (await registry.get("netpol", "prod", "p"))["metadata"]["namespace"] == "prod"

    stores.run(scenario)


def test_deleting_a_namespace_deletes_what_is_in_it(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
        await registry.apply([namespace, policy("p", namespace="prod"), policy("q")])
        await registry.delete("Namespace", "", "prod")
        assert [o["metadata"]["name"] for o in (await registry.list("NetworkPolicy"))[0]] == ["q"]

    stores.run(scenario)


def test_list_filters_by_namespace_and_label_selector(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
        await registry.apply([namespace, policy("a", labels={"tier": "web"}), policy("b", labels={"tier": "db"}),
                              policy("c", namespace="prod", labels={"tier": "web"})])
        names = lambda objects: [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects]  # noqa: E731
        assert names((await registry.list("netpol", "default"))[0]) == [("default", "a"), ("default", "b")]
        assert names((await registry.list("netpol", "", "tier=web"))[0]) == [("default", "a"), ("prod", "c")]
        assert names((await registry.list("netpol", "", "tier notin (web)"))[0]) == [("default", "b")]

    stores.run(scenario)


def test_watch_without_revision_starts_with_the_current_objects(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        await registry.apply([policy("a"), policy("b")])
        events = registry.watch(["netpol"])
        first = await take(events, 2)
        assert [(e.type, e.object["metadata"]["name"]) for e in first] == [("ADDED", "a"), ("ADDED", "b")]
        await registry.apply([policy("a", app="db")])
        [modified] = await take(events, 1)
        assert (modified.type, modified.object["metadata"]["name"]) == ("MODIFIED", "a")
        await events.aclose()  # type: ignore[attr-defined]

    stores.run(scenario)


def test_watch_resumes_after_a_revision_in_revision_order(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        _, r1 = await registry.apply([policy("a")])
        _, r2 = await registry.apply([policy("b")])
        _, r3 = await registry.apply([policy("a", app="db")])
        _, r4 = await registry.delete("netpol", "default", "b")
        events = registry.watch(["NetworkPolicy"], since=r1)
        seen = await take(events, 3)
        assert [(e.type, e.object["metadata"]["name"], e.revision) for e in seen] == [
            ("ADDED", "b", r2), ("MODIFIED", "a", r3), ("DELETED", "b", r4)]
        await events.aclose()  # type: ignore[attr-defined]

    stores.run(scenario)


def test_watch_from_a_compacted_revision_fails_so_the_watcher_lists_again(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        _, r1 = await registry.apply([policy("a")])
        await registry.apply([policy("a", app="x")])
        _, r3 = await registry.apply([policy("a", app="y")])
        await store.compact(r3)
        with pytest.raises(CompactedError):
            await take(registry.watch(["netpol"], since=r1), 1)

    stores.run(scenario)


def test_services_get_cluster_ips_from_the_service_cidr_and_keep_them(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        def service(name: str, **spec: Any) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                    "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec}}
        [a], _ = await registry.apply([service("a")])
        [b], _ = await registry.apply([service("b")])
        assert (a.object["spec"]["clusterIP"], b.object["spec"]["clusterIP"]) == ("10.96.0.1", "10.96.0.2")
        [again], _ = await registry.apply([service("a")])
        assert again.outcome == "unchanged"
        with pytest.raises(InvalidDocumentsError, match=re.escape('spec.clusterIP: Invalid value: "10.96.0.9": field is immutable')):
            await registry.apply([service("a", clusterIP="10.96.0.9")])
        with pytest.raises(InvalidDocumentsError, match="provided IP is already allocated"):
            await registry.apply([service("c", clusterIP="10.96.0.2")])
        with pytest.raises(InvalidDocumentsError, match="provided IP is not in the valid range"):
            await registry.apply([service("c", clusterIP="192.168.0.1")])
        [headless], _ = await registry.apply([service("h", clusterIP="None")])
        assert headless.object["spec"]["clusterIP"] == "None"
        await registry.delete("svc", "default", "a")
        [c], _ = await registry.apply([service("c")])
        assert c.object["spec"]["clusterIP"] == "10.96.0.1"  # released by the delete

    stores.run(scenario)


def test_status_survives_a_reapply_without_status(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}
        await registry.apply([{**pod, "status": {"podIP": "10.244.0.9"}}])
        [result], _ = await registry.apply([pod])
        assert result.outcome == "unchanged" and result.object["status"] == {"podIP": "10.244.0.9"}

    stores.run(scenario)


def test_deleting_a_namespace_larger_than_one_etcd_transaction_deletes_all_of_it(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"}}
        await registry.apply([namespace])
        for start in range(0, 250, 50):
            await registry.apply([policy(f"p{i}", namespace="big") for i in range(start, start + 50)])
        await registry.delete("Namespace", "", "big")
        assert (await registry.list("NetworkPolicy", "big"))[0] == []

    stores.run(scenario)


def test_an_apply_larger_than_etcds_transaction_limit_is_refused_whole(tmp_path: Path, etcd: EtcdServer) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        with pytest.raises(TransactionTooLargeError, match="more than etcd's limit of 128"):
            await registry.apply([policy(f"p{i}") for i in range(129)])
        assert (await registry.list("NetworkPolicy"))[0] == []

    StoreFactory("etcd", tmp_path, etcd).run(scenario)


def test_a_filtered_watch_sees_objects_enter_and_leave_the_selector(stores: StoreFactory) -> None:
    async def scenario(store: Store) -> None:
        registry = await registry_on(store)
        events = registry.watch(["netpol"], selector="tier=web", since=await store.revision())
        await registry.apply([policy("p", labels={"tier": "db"})])
        await registry.apply([policy("p", labels={"tier": "web"})])
        await registry.apply([policy("p", app="x", labels={"tier": "web"})])
        await registry.apply([policy("p", app="x", labels={"tier": "db"})])
        seen = await take(events, 3)
        assert [e.type for e in seen] == ["ADDED", "MODIFIED", "DELETED"]
        assert seen[2].object["metadata"]["labels"] == {"tier": "web"}  # its state when it last matched
        await events.aclose()  # type: ignore[attr-defined]

    stores.run(scenario)
