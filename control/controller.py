"""The derived-state controller: Endpoints for Services, pod CIDRs for Nodes.

Like Kubernetes' controllers, it holds no state of its own that matters: it lists the
objects it depends on, follows their changes through a watch, and after each burst of
changes reconciles what the burst touched. Its results are ordinary objects in the
store, so every watcher (the xDS server, agents, meshctl) sees them.

Theory of operation:
- One watch over Services, Pods, Endpoints and Nodes keeps a cache of them. Each
  event marks what it affects dirty: a Service or its Endpoints mark that Service; a
  Pod marks the Services that selected it before the change or select it after; a
  Node marks itself.
- The reconcile pass drains every event already waiting, then writes what differs:
  `compute_endpoints` for each dirty Service; a pod CIDR (lowest free /24 of the
  cluster CIDR) for each dirty Node that has none. Every write names the revision it
  was computed against, so a concurrent writer (another replica's controller) makes
  it fail instead of overwrite; the item stays dirty and is reconciled again from the
  fresher cache. Two replicas compute the same documents, so they converge.
- If the store's history no longer reaches back to the watch's revision, the
  controller lists again and reconciles everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from control import resources
from control.allocation import PoolExhaustedError
from control.endpoints import compute_endpoints, selects_pods
from control.registry import Registry
from control.store import CompactedError, ConflictError, Put, StoreError

log = logging.getLogger("tulle.control.controller")

Object = dict[str, Any]
_KINDS = ("Service", "Pod", "Endpoints", "Node")
_STORE_RETRY = 1.0


def _key(obj: Object) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


class DerivedStateController:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.cache: dict[str, dict[tuple[str, str], Object]] = {kind: {} for kind in _KINDS}
        self._dirty_services: set[tuple[str, str]] = set()
        self._dirty_nodes: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except CompactedError:
                log.warning("watch fell behind the store's history; listing again")
            except StoreError as e:
                log.error("store unavailable, retrying in %.0fs: %s", _STORE_RETRY, e)
                await asyncio.sleep(_STORE_RETRY)
            except Exception:
                # A bug must not leave the mesh without derived state until a restart.
                log.exception("derived-state controller failed; starting over in %.0fs", _STORE_RETRY)
                await asyncio.sleep(_STORE_RETRY)

    async def _follow(self) -> None:
        snapshot, revision = await self.registry.snapshot(_KINDS)
        self.cache = {kind: {_key(o): o for o in snapshot[kind]} for kind in _KINDS}
        self._dirty_services = set(self.cache["Service"]) | set(self.cache["Endpoints"])
        self._dirty_nodes = {name for _, name in self.cache["Node"]}

        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in self.registry.watch(_KINDS, since=revision):
                    queue.put_nowait(event)
            except BaseException as e:  # handed to the reconcile loop, which re-raises it
                queue.put_nowait(e)
                raise

        pumping = asyncio.create_task(pump())
        try:
            await self._reconcile()
            while True:
                item = await queue.get()
                while True:
                    if isinstance(item, BaseException):
                        raise item
                    self._observe(item.type, item.object)
                    try:
                        item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                await self._reconcile()
        finally:
            pumping.cancel()
            with contextlib.suppress(BaseException):
                await pumping

    def _observe(self, event_type: str, obj: Object) -> None:
        kind = obj["kind"]
        key = _key(obj)
        before = self.cache[kind].get(key)
        if event_type == "DELETED":
            self.cache[kind].pop(key, None)
        else:
            self.cache[kind][key] = obj
        if kind in ("Service", "Endpoints"):
            self._dirty_services.add(key)
        elif kind == "Pod":
            # Only the Services that selected the Pod before the change or select it after.
            labels = [(p["metadata"].get("labels") or {}) for p in (before, obj) if p is not None]
            for service_key, service in self.cache["Service"].items():
                if service_key[0] == key[0] and any(_selects(service, pod_labels) for pod_labels in labels):
                    self._dirty_services.add(service_key)
        elif kind == "Node":
            self._dirty_nodes.add(key[1])

    async def _reconcile(self) -> None:
        # A write that loses to a concurrent one leaves its item dirty: the winner's write
        # is an event on its way through the watch, and the pass after it retries.
        for key in sorted(self._dirty_services):
            try:
                await self._reconcile_endpoints(key)
            except ConflictError:
                continue
            self._dirty_services.discard(key)
        for name in sorted(self._dirty_nodes):
            try:
                await self._reconcile_node(name)
            except ConflictError:
                continue
            self._dirty_nodes.discard(name)

    async def _reconcile_endpoints(self, key: tuple[str, str]) -> None:
        service = self.cache["Service"].get(key)
        current = self.cache["Endpoints"].get(key)
        if service is None or not selects_pods(service):
            if current is not None and service is None and _managed(current):
                await self.registry.delete_server_owned(
                    "Endpoints", key[0], key[1], int(current["metadata"]["resourceVersion"])
                )
            return
        pods = (p for (namespace, _), p in self.cache["Pod"].items() if namespace == key[0])
        desired = compute_endpoints(service, pods)
        desired["metadata"].setdefault("labels", {})[_MANAGED_BY] = "tulle-control"
        if current is not None and _same_endpoints(current, desired):
            return
        expect = int(current["metadata"]["resourceVersion"]) if current else 0
        desired["metadata"] = self._carry_metadata(desired["metadata"], current)
        await self.registry.write_server_owned(desired, expect)

    def _carry_metadata(self, meta: Object, current: Object | None) -> Object:
        if current is None:
            return self.registry.new_metadata(meta["name"], meta["namespace"]) | {"labels": meta["labels"]}
        old = current["metadata"]
        return {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": old["uid"],
            "creationTimestamp": old["creationTimestamp"],
            "generation": old.get("generation", 1) + 1,
            "labels": meta["labels"],
        }

    async def _reconcile_node(self, name: str) -> None:
        node = self.cache["Node"].get(("", name))
        if node is None or (node.get("spec") or {}).get("podCIDR"):
            return
        pool = self.registry.cluster.pod_cidrs
        entries, _ = await self.registry.store.range(pool.key_prefix)
        taken = {pool.value_of(e.key) for e in entries}
        try:
            cidr = pool.next_free(taken)
        except PoolExhaustedError as e:
            log.error("node %s gets no pod CIDR: %s", name, e)
            return
        updated = dict(node)
        updated["spec"] = {**(node.get("spec") or {}), "podCIDR": cidr, "podCIDRs": [cidr]}
        key = resources.object_key(resources.BY_NAME["Node"], "", name)
        await self.registry.write_server_owned(
            updated, int(node["metadata"]["resourceVersion"]), extra=[Put(pool.key(cidr), key.encode(), 0)]
        )


_MANAGED_BY = "endpoints.tulle.dev/managed-by"


def _selects(service: Object, labels: dict[str, str]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _managed(endpoints: Object) -> bool:
    return (endpoints["metadata"].get("labels") or {}).get(_MANAGED_BY) == "tulle-control"


def _same_endpoints(current: Object, desired: Object) -> bool:
    return current.get("subsets") == desired.get("subsets") and (
        current["metadata"].get("labels") or {}
    ) == desired["metadata"].get("labels")
