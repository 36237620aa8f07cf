"""The config API's gRPC service (proto/tulle/config/v1/config.proto) over the registry.

A thin shell: it decodes JSON documents, calls the registry, and maps the registry's
errors to gRPC status codes with kubectl-style messages (see the .proto for the table).
Each call is first authorized by its caller (`control.caller`, rules in
`control.api_authorization`); a refusal is PERMISSION_DENIED with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from typing import Any, NoReturn, TypeVar

import grpc

from control import resources
from control.api_authorization import may_apply, may_call, may_get
from control.caller import Caller, Role, caller_of
from control.registry import (
    AlreadyExistsError,
    InvalidDocumentsError,
    NotFoundError,
    ObjectConflictError,
    Registry,
)
from control.resources import UnknownKindError
from control.store import CompactedError, ConflictError, StoreError, TransactionTooLargeError
from netpolicy.labels import LabelSelector, SelectorError
from proto.tulle.config.v1 import config_pb2, config_pb2_grpc

T = TypeVar("T")

_OUTCOMES = {
    "created": config_pb2.ApplyResult.CREATED,
    "configured": config_pb2.ApplyResult.CONFIGURED,
    "unchanged": config_pb2.ApplyResult.UNCHANGED,
}
_EVENT_TYPES = {
    "ADDED": config_pb2.WatchEvent.ADDED,
    "MODIFIED": config_pb2.WatchEvent.MODIFIED,
    "DELETED": config_pb2.WatchEvent.DELETED,
}
# Registry errors, by the status code they travel as.
_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidDocumentsError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownKindError, grpc.StatusCode.INVALID_ARGUMENT),
    (SelectorError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (ObjectConflictError, grpc.StatusCode.ABORTED),
    (ConflictError, grpc.StatusCode.ABORTED),
    (CompactedError, grpc.StatusCode.OUT_OF_RANGE),
    (TransactionTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
)


def version() -> str:
    try:
        return metadata.version("tulle")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> NoReturn:
    for error_type, code in _STATUS:
        if isinstance(error, error_type):
            await context.abort(code, str(error))
    raise error


class ConfigService(config_pb2_grpc.ConfigServicer):
    def __init__(self, registry: Registry, started: float | None = None, trust_domain: str = "cluster.local") -> None:
        self.registry = registry
        self.started = started if started is not None else time.monotonic()
        self.replica = f"{socket.gethostname()}/{os.getpid()}"
        self.trust_domain = trust_domain

    async def _caller(self, context: grpc.aio.ServicerContext, method: str) -> Caller:
        caller = caller_of(context, self.trust_domain)
        if (refused := may_call(caller, method)) is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        return caller

    async def _authorize_apply(self, caller: Caller, documents: list[Any], context: grpc.aio.ServicerContext) -> None:
        """`may_call` let only unrestricted callers and agents this far; an agent's
        documents are checked against what they would replace."""
        if caller.role is not Role.AGENT:
            return
        for doc in documents:
            if not isinstance(doc, dict):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent of node {caller.name!r}: not an object")
            meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            try:
                stored = await self.registry.get(str(doc.get("kind") or ""), str(meta.get("namespace") or ""),
                                                 str(meta.get("name") or ""))
            except (NotFoundError, UnknownKindError, StoreError):
                stored = None
            if (refused := may_apply(caller, doc, stored)) is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)

    async def _call(self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except tuple(t for t, _ in _STATUS) as e:
            await _abort(context, e)

    async def Apply(self, request: config_pb2.ApplyRequest, context: grpc.aio.ServicerContext) -> config_pb2.ApplyResponse:
        caller = await self._caller(context, "Apply")
        documents = []
        for i, text in enumerate(request.documents):
            try:
                documents.append(json.loads(text))
            except ValueError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"document {i + 1} is not JSON: {e}")
        await self._authorize_apply(caller, documents, context)
        results, revision = await self._call(context, lambda: self.registry.apply(documents, dry_run=request.dry_run))
        return config_pb2.ApplyResponse(
            results=[config_pb2.ApplyResult(outcome=_OUTCOMES[r.outcome], document=_dump(r.object)) for r in results],
            revision=revision,
        )

    async def Get(self, request: config_pb2.GetRequest, context: grpc.aio.ServicerContext) -> config_pb2.GetResponse:
        caller = await self._caller(context, "Get")
        ref = request.ref
        missing: NotFoundError | None = None

        async def lookup() -> dict[str, Any] | None:
            nonlocal missing
            try:
                return await self.registry.get(ref.kind, ref.namespace, ref.name)
            except NotFoundError as error:
                missing = error
                return None

        obj = await self._call(context, lookup)
        # Authorized before NOT_FOUND is told: a caller that may not read an object must not
        # learn whether it exists (control.api_authorization.may_get).
        kind = resources.lookup(ref.kind).name
        if (refused := may_get(caller, kind, ref.namespace, ref.name, obj)) is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        if obj is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(missing))
        return config_pb2.GetResponse(document=_dump(obj))

    async def List(self, request: config_pb2.ListRequest, context: grpc.aio.ServicerContext) -> config_pb2.ListResponse:
        await self._caller(context, "List")
        async def work() -> tuple[list[dict[str, Any]], int]:
            selector = LabelSelector.parse(request.label_selector) if request.label_selector else None
            return await self.registry.list(request.kind, request.namespace, selector)

        objects, revision = await self._call(context, work)
        return config_pb2.ListResponse(documents=[_dump(o) for o in objects], revision=revision)

    async def Delete(self, request: config_pb2.DeleteRequest, context: grpc.aio.ServicerContext) -> config_pb2.DeleteResponse:
        await self._caller(context, "Delete")
        ref = request.ref
        obj, revision = await self._call(
            context, lambda: self.registry.delete(ref.kind, ref.namespace, ref.name, request.resource_version)
        )
        return config_pb2.DeleteResponse(document=_dump(obj), revision=revision)

    async def Watch(
        self, request: config_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.WatchEvent]:
        await self._caller(context, "Watch")
        try:
            selector = LabelSelector.parse(request.label_selector) if request.label_selector else None
            events = self.registry.watch(list(request.kinds), request.namespace, selector, request.revision)
            async for event in events:
                yield config_pb2.WatchEvent(
                    type=_EVENT_TYPES[event.type], document=_dump(event.object), revision=event.revision
                )
        except tuple(t for t, _ in _STATUS) as e:
            await _abort(context, e)

    async def Status(self, request: config_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> config_pb2.StatusResponse:
        await self._caller(context, "Status")
        counts, revision = await self._call(context, self.registry.counts)
        return config_pb2.StatusResponse(
            version=version(),
            store=self.registry.store.url,
            revision=revision,
            objects=counts,
            uptime_seconds=time.monotonic() - self.started,
            replica=self.replica,
        )
