"""The derived-state controller on both stores: Endpoints follow Services and Pods; Nodes
get pod CIDRs; all of it visible to watchers as ordinary objects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from control.controller import DerivedStateController
from control.registry import InvalidDocumentsError, NotFoundError, Registry
from control.store import Store
from tests.control.conftest import StoreFactory

Object = dict[str, Any]


def service(name: str = "web", selector: dict[str, str] | None = None) -> Object:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector or {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def pod(name: str, ip: str, app: str = "web", node: str = "node-a") -> Object:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}, "status": {"podIP": ip}}


def node(name: str, ip: str) -> Object:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def endpoint_ips(registry: Registry, name: str = "web") -> list[str] | None:
    try:
        endpoints = await registry.get("Endpoints", "default", name)
    except NotFoundError:
        return None
    return [a["ip"] for s in endpoints["subsets"] for a in s.get("addresses", [])]


def with_controller(stores: StoreFactory, scenario: Callable[[Registry], Awaitable[None]]) -> None:
    async def run(store: Store) -> None:
        registry = Registry(store)
        await registry.ensure_namespace("default")
        controller = DerivedStateController(registry)
        task = asyncio.create_task(controller.run())
        try:
            await scenario(registry)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    stores.run(run)


def test_endpoints_follow_pods_matching_the_service_selector(stores: StoreFactory) -> None:
    async def scenario(registry: Registry) -> None:
        await registry.apply([service(), pod("a", "10.244.0.5"), pod("other", "10.244.0.6", app="db")])

        async def has(ips: list[str]) -> bool:
            return await endpoint_ips(registry) == ips

        await eventually(lambda: has(["10.244.0.5"]))
        await registry.apply([pod("b", "10.244.0.4")])
        await eventually(lambda: has(["10.244.0.4", "10.244.0.5"]))
        await registry.delete("Pod", "default", "a")
        await eventually(lambda: has(["10.244.0.4"]))
        endpoints = await registry.get("Endpoints", "default", "web")
        assert endpoints["subsets"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
        assert endpoints["subsets"][0]["addresses"][0]["targetRef"] == {"kind": "Pod", "name": "b", "namespace": "default"} | {
            "uid": (await registry.get("Pod", "default", "b"))["metadata"]["uid"]}

    with_controller(stores, scenario)


def test_endpoints_are_deleted_with_their_service(stores: StoreFactory) -> None:
    async def scenario(registry: Registry) -> None:
        await registry.apply([service(), pod("a", "10.244.0.5")])
        await eventually(lambda: _is(endpoint_ips(registry), ["10.244.0.5"]))
        await registry.delete("Service", "default", "web")
        await eventually(lambda: _is(endpoint_ips(registry), None))

    with_controller(stores, scenario)


def test_endpoints_changes_reach_a_watcher_as_modified_events(stores: StoreFactory) -> None:
    async def scenario(registry: Registry) -> None:
        await registry.apply([service()])
        await eventually(lambda: _is(endpoint_ips(registry), []))
        events = registry.watch(["Endpoints"], since=await registry.store.revision())
        await registry.apply([pod("a", "10.244.0.5")])
        event = await asyncio.wait_for(anext(events), 5)
        assert event.type == "MODIFIED"
        assert event.object["subsets"][0]["addresses"][0]["ip"] == "10.244.0.5"
        await events.aclose()  # type: ignore[attr-defined]

    with_controller(stores, scenario)


def test_nodes_get_the_lowest_free_pod_cidr_and_release_it_when_deleted(stores: StoreFactory) -> None:
    async def scenario(registry: Registry) -> None:
        await registry.apply([node("node-a", "192.168.0.1")])
        await registry.apply([node("node-b", "192.168.0.2")])

        async def cidr(name: str) -> str | None:
            try:
                return (await registry.get("Node", "", name)).get("spec", {}).get("podCIDR")
            except NotFoundError:
                return None

        await eventually(lambda: _is(cidr("node-b"), "10.244.1.0/24"))
        assert await cidr("node-a") == "10.244.0.0/24"
        [again], _ = await registry.apply([node("node-a", "192.168.0.1")])
        assert again.outcome == "unchanged"  # an agent re-registering keeps its CIDR
        await registry.delete("Node", "", "node-a")
        await registry.apply([node("node-c", "192.168.0.3")])
        await eventually(lambda: _is(cidr("node-c"), "10.244.0.0/24"))

    with_controller(stores, scenario)


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


def test_a_node_applied_with_its_own_pod_cidr_keeps_it_and_the_controller_skips_it(stores: StoreFactory) -> None:
    async def scenario(registry: Registry) -> None:
        static = node("node-static", "192.168.0.9")
        static["spec"] = {"podCIDR": "10.244.0.0/24"}
        await registry.apply([static])
        await registry.apply([node("node-dynamic", "192.168.0.10")])

        async def cidr() -> str | None:
            return (await registry.get("Node", "", "node-dynamic")).get("spec", {}).get("podCIDR")

        await eventually(lambda: _is(cidr(), "10.244.1.0/24"))
        clash = node("node-clash", "192.168.0.11")
        clash["spec"] = {"podCIDR": "10.244.1.0/24"}
        with pytest.raises(InvalidDocumentsError, match="is already assigned to another node"):
            await registry.apply([clash])

    with_controller(stores, scenario)


def test_relabelling_a_pod_moves_it_between_services_endpoints(stores: StoreFactory) -> None:
    async def scenario(registry: Registry) -> None:
        await registry.apply([service("web"), service("db"), pod("p", "10.244.0.7", app="web")])
        await eventually(lambda: _is(endpoint_ips(registry, "web"), ["10.244.0.7"]))
        await registry.apply([pod("p", "10.244.0.7", app="db")])
        await eventually(lambda: _is(endpoint_ips(registry, "db"), ["10.244.0.7"]))
        await eventually(lambda: _is(endpoint_ips(registry, "web"), []))

    with_controller(stores, scenario)


def test_two_controllers_on_one_store_converge_without_fighting(stores: StoreFactory) -> None:
    async def run(store: Store) -> None:
        registry = Registry(store)
        await registry.ensure_namespace("default")
        tasks = [asyncio.create_task(DerivedStateController(Registry(store)).run()) for _ in range(2)]
        try:
            await registry.apply([service(), *(pod(f"p{i}", f"10.244.0.{i + 10}") for i in range(5)),
                                  node("n1", "192.168.0.1"), node("n2", "192.168.0.2")])
            expected = [f"10.244.0.{i + 10}" for i in range(5)]
            await eventually(lambda: _is(endpoint_ips(registry), expected))
            settled = (await registry.get("Endpoints", "default", "web"))["metadata"]["resourceVersion"]
            await asyncio.sleep(0.3)
            assert (await registry.get("Endpoints", "default", "web"))["metadata"]["resourceVersion"] == settled

            async def cidrs() -> set[str | None]:
                return {(await registry.get("Node", "", n)).get("spec", {}).get("podCIDR") for n in ("n1", "n2")}

            await eventually(lambda: _is(cidrs(), {"10.244.0.0/24", "10.244.1.0/24"}))
            assert not any(task.done() for task in tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    stores.run(run)
