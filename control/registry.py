"""The object registry: Kubernetes-shaped objects on top of a revisioned store.

This is the Python-level API of tulle-control's configuration. The gRPC API, the
derived-state controller and the xDS server (in the same process) all go through it:

    objects, revision = await registry.list("Service")
    async for event in registry.watch(["Service", "Endpoints"], since=revision):
        ...  # event.type in ("ADDED", "MODIFIED", "DELETED"), event.object, event.revision

Rules:
- An object is stored under `<Kind>/<namespace>/<name>` as JSON. Its
  `metadata.resourceVersion` is the store's mod revision of that key, written in on
  read, never stored. `uid` and `creationTimestamp` are set on creation and kept;
  `generation` starts at 1 and grows when anything but metadata and status changes.
- Apply is all-or-nothing: every document is validated, then all are written in one
  store transaction, or none is. A document carrying `metadata.resourceVersion` is
  written only if the stored object is still at that version ("0": must not exist).
  Without one, apply is last-writer-wins, but still read-modify-write safe: the
  registry retries when the object changed between its read and its write.
- Namespaced objects need their Namespace to exist (or be in the same apply);
  deleting a Namespace deletes everything in it first (in transactions of at most
  100 objects, since etcd bounds a transaction), then the Namespace.
- Server-assigned fields survive a re-apply that omits them and cannot be changed:
  a Service's `spec.clusterIP`/`clusterIPs` (allocated here, at creation, from the
  service CIDR, like the Kubernetes API server does), a Node's `spec.podCIDR`/`podCIDRs`
  (assigned by the controller, or given by the Node's own document: then, if inside the
  cluster CIDR, it must be free). A document without `status` keeps the stored status.
- Watch events are ADDED, MODIFIED and DELETED in revision order; a DELETED event
  carries the object's last state. With a label selector (or a namespace), an update
  that makes an object match is ADDED and one that makes it stop matching is DELETED
  (with its state before the update), as Kubernetes' watch reports it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from control import resources
from control.allocation import ALLOCATION_PREFIX, Pool, PoolExhaustedError
from control.resources import DEFAULT_NAMESPACE, Kind
from control.store import ConflictError, Delete, Entry, EventType, Op, Put, Store
from control.validation import InvalidObjectError, validate
from control.validation.schema import FieldError, forbidden, invalid
from netpolicy.labels import LabelSelector

Object = dict[str, Any]
Objects = list[Object]
Ops = list[Op]
Errors = list[FieldError]

_SERVER_OWNED = ("uid", "resourceVersion", "creationTimestamp", "generation")
_RETRIES = 8
_DELETE_BATCH = 100


class NotFoundError(LookupError):
    pass


class ObjectConflictError(Exception):
    """The object is not at the resourceVersion the request expected."""


class AlreadyExistsError(Exception):
    pass


class InvalidDocumentsError(ValueError):
    """One or more documents of an apply are invalid; nothing was stored."""

    def __init__(self, errors: Sequence[InvalidObjectError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = list(errors)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcome: str  # "created", "configured", "unchanged"
    object: Object


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # "ADDED", "MODIFIED", "DELETED"
    object: Object
    revision: int


Results = list[ApplyResult]


@dataclass(frozen=True)
class ClusterConfig:
    service_cidr: str = "10.96.0.0/16"
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_prefix: int = 24

    @property
    def service_ips(self) -> Pool:
        return Pool.addresses("service-ip", self.service_cidr)

    @property
    def pod_cidrs(self) -> Pool:
        return Pool.subnets("pod-cidr", self.cluster_cidr, self.node_cidr_prefix)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(kind: Kind, name: str) -> str:
    """kubectl's way to name an object in errors: `networkpolicies.networking.k8s.io "x"`."""
    return f'{kind.resource} "{name}"'


def decode(entry_value: bytes, revision: int) -> Object:
    obj: Object = json.loads(entry_value)
    obj["metadata"]["resourceVersion"] = str(revision)
    return obj


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _body(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What `generation` counts changes of: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _allocated_values(kind: Kind, obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(pool name, value) of every allocation an object holds."""
    spec = obj.get("spec") or {}
    if kind.name == "Service":
        ip = spec.get("clusterIP")
        return [("service-ip", ip)] if ip and ip != "None" else []
    if kind.name == "Node" and spec.get("podCIDR"):
        return [("pod-cidr", spec["podCIDR"])]
    return []


def _validate_all(documents: Sequence[Any]) -> list[Kind]:
    kinds: list[Kind] = []
    failures: list[InvalidObjectError] = []
    seen: set[str] = set()
    for document in documents:
        try:
            kind = validate(document)
        except InvalidObjectError as e:
            failures.append(e)
            continue
        kinds.append(kind)
        meta = document["metadata"]
        key = resources.object_key(kind, meta.get("namespace") or DEFAULT_NAMESPACE, meta["name"])
        if key in seen:
            failures.append(InvalidObjectError(kind.name, meta["name"], [
                invalid("metadata.name", meta["name"], "the same object appears twice in one apply")
            ]))
        seen.add(key)
    if failures:
        raise InvalidDocumentsError(failures)
    return kinds


@dataclass
class _Plan:
    """What one apply will write, built against one read of the store."""

    ops: list[Op] = field(default_factory=list)
    results: list[tuple[str, Object, Kind]] = field(default_factory=list)
    user_expected: set[str] = field(default_factory=set)


class Registry:
    def __init__(
        self,
        store: Store,
        cluster: ClusterConfig | None = None,
        clock: Callable[[], str] = _now,
        new_uid: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.store = store
        self.cluster = cluster or ClusterConfig()
        self._clock = clock
        self._new_uid = new_uid

    # --- reads ------------------------------------------------------------------------

    async def get(self, kind_name: str, namespace: str, name: str) -> Object:
        kind = resources.lookup(kind_name)
        entry = await self.store.get(resources.object_key(kind, namespace or DEFAULT_NAMESPACE, name))
        if entry is None:
            raise NotFoundError(f"{describe(kind, name)} not found")
        return decode(entry.value, entry.mod_revision)

    async def list(
        self, kind_name: str, namespace: str = "", selector: LabelSelector | str | None = None
    ) -> tuple[Objects, int]:
        """Objects of a kind (in a namespace; every one when empty) and the revision read at."""
        kind = resources.lookup(kind_name)
        match = LabelSelector.parse(selector) if isinstance(selector, str) else selector
        entries, revision = await self.store.range(resources.kind_prefix(kind, namespace))
        objects = [decode(e.value, e.mod_revision) for e in entries]
        if match is not None and not match.selects_everything:
            objects = [o for o in objects if match.matches(o["metadata"].get("labels") or {})]
        return objects, revision

    async def snapshot(self, kinds: Iterable[str]) -> tuple[dict[str, Objects], int]:
        """Every object of `kinds`, all read at one revision (which is returned)."""
        wanted: dict[str, Objects] = {resources.lookup(k).name: [] for k in kinds}
        entries, revision = await self.store.range("")
        for entry in entries:
            objects = wanted.get(entry.key.split("/", 1)[0])
            if objects is not None:
                objects.append(decode(entry.value, entry.mod_revision))
        return wanted, revision

    async def counts(self) -> tuple[dict[str, int], int]:
        entries, revision = await self.store.range("")
        counts: dict[str, int] = {}
        for entry in entries:
            if not entry.key.startswith(ALLOCATION_PREFIX):
                kind = entry.key.split("/", 1)[0]
                counts[kind] = counts.get(kind, 0) + 1
        return counts, revision

    async def watch(
        self,
        kinds: Iterable[str] = (),
        namespace: str = "",
        selector: LabelSelector | str | None = None,
        since: int = 0,
    ) -> AsyncIterator[WatchEvent]:
        """Changes after revision `since`; with `since` 0, the current objects first as ADDED."""
        wanted = {resources.lookup(k).name for k in kinds}
        match = LabelSelector.parse(selector) if isinstance(selector, str) else selector

        def selected(kind_name: str, obj: Object) -> bool:
            if wanted and kind_name not in wanted:
                return False
            if namespace and obj["metadata"].get("namespace", "") != namespace:
                return False
            return match is None or match.matches(obj["metadata"].get("labels") or {})

        prefix = resources.kind_prefix(resources.BY_NAME[next(iter(wanted))]) if len(wanted) == 1 else ""
        if since == 0:
            entries, since = await self.store.range(prefix)
            for entry in entries:
                kind_name = entry.key.split("/", 1)[0]
                if entry.key.startswith(ALLOCATION_PREFIX):
                    continue
                obj = decode(entry.value, entry.mod_revision)
                if selected(kind_name, obj):
                    yield WatchEvent("ADDED", obj, entry.mod_revision)
        async for batch in self.store.watch(prefix, since):
            for event in batch:
                if event.key.startswith(ALLOCATION_PREFIX):
                    continue
                kind_name = event.key.split("/", 1)[0]
                obj = decode(event.value, event.revision)
                if event.type is EventType.DELETE:
                    if selected(kind_name, obj):
                        yield WatchEvent("DELETED", obj, event.revision)
                    continue
                now = selected(kind_name, obj)
                if event.created:
                    if now:
                        yield WatchEvent("ADDED", obj, event.revision)
                    continue
                # An update moves the object into or out of a filtered watch, as Kubernetes'
                # watch cache reports it; with the old value unknown, it counts as selected.
                before = event.prev_value is None or selected(kind_name, decode(event.prev_value, event.revision))
                if now:
                    yield WatchEvent("MODIFIED" if before else "ADDED", obj, event.revision)
                elif before and event.prev_value is not None:
                    yield WatchEvent("DELETED", decode(event.prev_value, event.revision), event.revision)

    # --- writes -----------------------------------------------------------------------

    async def apply(self, documents: Sequence[Any], dry_run: bool = False) -> tuple[Results, int]:
        """Create or update every document, all or nothing (see the module rules)."""
        kinds = _validate_all(documents)
        for attempt in range(_RETRIES):
            plan = await self._plan(documents, kinds)
            if dry_run or not plan.ops:
                revision = await self.store.revision()
                return [self._result(o, obj, revision, None) for o, obj, _ in plan.results], revision
            try:
                revision = await self.store.commit(plan.ops)
            except ConflictError as conflict:
                if conflict.key in plan.user_expected:
                    kind_name, _, name = conflict.key.partition("/")
                    raise ObjectConflictError(
                        f"Operation cannot be fulfilled on {describe(resources.BY_NAME[kind_name], name.rpartition('/')[2])}: "
                        "the object has been modified; please apply your changes to the latest version and try again"
                    ) from None
                if attempt == _RETRIES - 1:
                    raise
                continue
            return [self._result(o, obj, revision, revision) for o, obj, _ in plan.results], revision
        raise AssertionError("unreachable")

    def _result(self, outcome: str, obj: Object, revision: int, written: int | None) -> ApplyResult:
        out = copy.deepcopy(obj)
        if outcome != "unchanged" and written is not None:
            out["metadata"]["resourceVersion"] = str(written)
        return ApplyResult(outcome, out)

    async def _plan(self, documents: Sequence[Any], kinds: Sequence[Kind]) -> _Plan:
        plan = _Plan()
        applied_namespaces = {d["metadata"]["name"] for d, k in zip(documents, kinds, strict=True) if k.name == "Namespace"}
        checked_namespaces: set[str] = set()
        service_ips: set[str] | None = None
        pod_cidrs: set[str] | None = None
        for document, kind in zip(documents, kinds, strict=True):
            doc = copy.deepcopy(dict(document))
            meta = doc["metadata"]
            name = meta["name"]
            if kind.namespaced:
                meta["namespace"] = namespace = meta.get("namespace") or DEFAULT_NAMESPACE
                if namespace not in applied_namespaces and namespace not in checked_namespaces:
                    if await self.store.get(resources.object_key(resources.BY_NAME["Namespace"], "", namespace)) is None:
                        raise NotFoundError(f'namespaces "{namespace}" not found')
                    checked_namespaces.add(namespace)
            else:
                meta.pop("namespace", None)
                namespace = ""
            key = resources.object_key(kind, namespace, name)
            entry = await self.store.get(key)
            stored = json.loads(entry.value) if entry else None

            requested = meta.get("resourceVersion")
            expect = entry.mod_revision if entry else 0
            if requested not in (None, ""):
                if not str(requested).isdigit():
                    raise InvalidDocumentsError([InvalidObjectError(kind.name, name, [
                        invalid("metadata.resourceVersion", requested, "must be a revision number")])])
                if int(requested) != expect:
                    if int(requested) == 0:
                        raise AlreadyExistsError(f"{describe(kind, name)} already exists")
                    if entry is None:
                        raise NotFoundError(f"{describe(kind, name)} not found")
                    raise ObjectConflictError(
                        f"Operation cannot be fulfilled on {describe(kind, name)}: the object has been "
                        "modified; please apply your changes to the latest version and try again"
                    )
                plan.user_expected.add(key)

            obj = self._merge(kind, doc, stored)
            if kind.name == "Service":
                if service_ips is None:
                    service_ips = await self._taken(self.cluster.service_ips)
                self._assign_cluster_ip(obj, stored, service_ips, plan, key)
            elif kind.name == "Node" and (obj.get("spec") or {}).get("podCIDR"):
                if pod_cidrs is None:
                    pod_cidrs = await self._taken(self.cluster.pod_cidrs)
                self._claim_pod_cidr(obj, stored, pod_cidrs, plan, key)

            if stored is not None and obj == stored:
                plan.results.append(("unchanged", decode(entry.value, entry.mod_revision) if entry else obj, kind))
                continue
            plan.ops.append(Put(key, _encode(obj), expect))
            plan.results.append(("created" if stored is None else "configured", obj, kind))
        return plan

    async def _taken(self, pool: Pool) -> set[str]:
        entries, _ = await self.store.range(pool.key_prefix)
        return {pool.value_of(e.key) for e in entries}

    def _merge(self, kind: Kind, doc: Object, stored: Object | None) -> Object:
        meta = doc["metadata"]
        for owned in _SERVER_OWNED:
            meta.pop(owned, None)
        errors: Errors = []
        if stored is None:
            server = {"uid": self._new_uid(), "creationTimestamp": self._clock(), "generation": 1}
        else:
            old = stored["metadata"]
            generation = old.get("generation", 1)
            if "status" not in doc and "status" in stored:
                doc["status"] = stored["status"]
            for field_name in self._sticky_fields(kind):
                self._keep_assigned(doc, stored, field_name, errors)
            if _body(doc) != _body(stored):
                generation += 1
            server = {"uid": old["uid"], "creationTimestamp": old["creationTimestamp"], "generation": generation}
        if errors:
            raise InvalidDocumentsError([InvalidObjectError(kind.name, meta["name"], errors)])
        # Server-owned fields first, so that `get -o yaml` reads like kubectl's.
        doc["metadata"] = {"name": meta["name"], **({"namespace": meta["namespace"]} if "namespace" in meta else {}),
                           **server, **{k: v for k, v in meta.items() if k not in ("name", "namespace")}}
        return doc

    @staticmethod
    def _sticky_fields(kind: Kind) -> tuple[str, ...]:
        if kind.name == "Service":
            return ("clusterIP", "clusterIPs")
        if kind.name == "Node":
            return ("podCIDR", "podCIDRs")
        return ()

    @staticmethod
    def _keep_assigned(doc: Object, stored: Object, field_name: str, errors: Errors) -> None:
        old = (stored.get("spec") or {}).get(field_name)
        if old in (None, "", []):
            return
        spec = doc.setdefault("spec", {})
        new = spec.get(field_name)
        if new in (None, "", []):
            spec[field_name] = old
        elif new != old:
            errors.append(invalid(f"spec.{field_name}", new, "field is immutable"))

    def _assign_cluster_ip(self, obj: Object, stored: Object | None, taken: set[str], plan: _Plan, key: str) -> None:
        spec = obj.setdefault("spec", {})
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            return
        if stored is not None and (stored.get("spec") or {}).get("clusterIP"):
            return  # kept by _merge
        pool = self.cluster.service_ips
        requested = spec.get("clusterIP")
        name = obj["metadata"]["name"]
        if requested:
            if not pool.contains(requested):
                raise InvalidDocumentsError([InvalidObjectError("Service", name, [invalid(
                    "spec.clusterIP", requested, f"provided IP is not in the valid range. The range of valid IPs is {pool.cidr}")])])
            if requested in taken:
                raise InvalidDocumentsError([InvalidObjectError("Service", name, [invalid(
                    "spec.clusterIP", requested, "provided IP is already allocated")])])
            ip = requested
        else:
            try:
                ip = pool.next_free(taken)
            except PoolExhaustedError as e:
                raise InvalidDocumentsError([InvalidObjectError("Service", name, [forbidden("spec.clusterIP", str(e))])]) from None
        taken.add(ip)
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
        plan.ops.append(Put(pool.key(ip), key.encode(), 0))

    def _claim_pod_cidr(self, obj: Object, stored: Object | None, taken: set[str], plan: _Plan, key: str) -> None:
        """A Node applied with its own podCIDR: inside the cluster CIDR it must be free, and
        is then held like an assigned one; outside it, it is the operator's own range."""
        cidr = obj["spec"]["podCIDR"]
        if stored is not None and (stored.get("spec") or {}).get("podCIDR"):
            return  # kept (and checked immutable) by _merge
        pool = self.cluster.pod_cidrs
        if not pool.contains(cidr):
            return
        if cidr in taken:
            raise InvalidDocumentsError([InvalidObjectError("Node", obj["metadata"]["name"], [invalid(
                "spec.podCIDR", cidr, "is already assigned to another node")])])
        taken.add(cidr)
        plan.ops.append(Put(pool.key(cidr), key.encode(), 0))

    async def delete(
        self, kind_name: str, namespace: str, name: str, resource_version: str = ""
    ) -> tuple[Object, int]:
        kind = resources.lookup(kind_name)
        namespace = (namespace or DEFAULT_NAMESPACE) if kind.namespaced else ""
        key = resources.object_key(kind, namespace, name)
        for _ in range(_RETRIES):
            entry = await self.store.get(key)
            if entry is None:
                raise NotFoundError(f"{describe(kind, name)} not found")
            if resource_version and resource_version != str(entry.mod_revision):
                raise ObjectConflictError(
                    f"Operation cannot be fulfilled on {describe(kind, name)}: the object has been modified; "
                    "please apply your changes to the latest version and try again"
                )
            if kind.name == "Namespace":
                await self._delete_contents(name)
            try:
                revision = await self.store.commit([*self._release(kind, entry), Delete(key, entry.mod_revision)])
            except ConflictError:
                continue
            return decode(entry.value, revision), revision
        raise ObjectConflictError(f"{describe(kind, name)} kept changing while being deleted; try again")

    async def _delete_contents(self, namespace: str) -> None:
        """Delete every object in a namespace, in transactions of at most _DELETE_BATCH
        objects (etcd bounds the operations of one transaction)."""
        for _ in range(_RETRIES):
            ops: Ops = []
            for kind in resources.KINDS:
                if kind.namespaced:
                    entries, _ = await self.store.range(resources.kind_prefix(kind, namespace))
                    ops.extend(op for entry in entries for op in (*self._release(kind, entry), Delete(entry.key, entry.mod_revision)))
            if not ops:
                return
            try:
                # Chunks never split an object from its allocations: both come from one entry.
                chunk: Ops = []
                for op in ops:
                    chunk.append(op)
                    if len(chunk) >= _DELETE_BATCH and op.expect is not None:
                        await self.store.commit(chunk)
                        chunk = []
                if chunk:
                    await self.store.commit(chunk)
                return
            except ConflictError:
                continue
        raise ObjectConflictError(f'namespace "{namespace}" kept changing while being deleted; try again')

    def _release(self, kind: Kind, entry: Entry) -> Ops:
        pools = {"service-ip": self.cluster.service_ips, "pod-cidr": self.cluster.pod_cidrs}
        return [Delete(pools[pool].key(value)) for pool, value in _allocated_values(kind, json.loads(entry.value))]

    async def ensure_namespace(self, name: str) -> None:
        """Create a Namespace if it does not exist (the `default` namespace at start-up)."""
        if await self.store.get(resources.object_key(resources.BY_NAME["Namespace"], "", name)) is not None:
            return
        with contextlib.suppress(AlreadyExistsError, ObjectConflictError):  # another replica was first
            await self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "resourceVersion": "0"}}])

    async def write_server_owned(self, obj: Object, expect: int, extra: Sequence[Op] = ()) -> int:
        """Store an object computed by the server (Endpoints, a Node's podCIDR) as is,
        if its key is still at `expect` (0: absent); `ConflictError` otherwise."""
        kind = resources.BY_NAME[obj["kind"]]
        meta = obj["metadata"]
        key = resources.object_key(kind, meta.get("namespace", ""), meta["name"])
        stored = dict(obj)
        stored["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
        return await self.store.commit([*extra, Put(key, _encode(stored), expect)])

    async def delete_server_owned(self, kind_name: str, namespace: str, name: str, expect: int) -> int:
        kind = resources.BY_NAME[kind_name]
        return await self.store.commit([Delete(resources.object_key(kind, namespace, name), expect)])

    def new_metadata(self, name: str, namespace: str = "") -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if namespace:
            meta["namespace"] = namespace
        meta.update(uid=self._new_uid(), creationTimestamp=self._clock(), generation=1)
        return meta
