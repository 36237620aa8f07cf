"""meshctl's connection to tulle-control: the config API over gRPC, documents as dicts.

Where to connect, first match wins: `--server`, `$TULLE_SERVER`, the local control
plane's unix socket when this user can use it, then 127.0.0.1:15014. Addresses are
`HOST:PORT` or `unix:/path`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from control.plane import DEFAULT_LISTEN, DEFAULT_SOCKET, MESSAGE_LIMITS
from proto.tulle.config.v1 import config_pb2, config_pb2_grpc

Object = dict[str, Any]

OUTCOMES = {
    config_pb2.ApplyResult.CREATED: "created",
    config_pb2.ApplyResult.CONFIGURED: "configured",
    config_pb2.ApplyResult.UNCHANGED: "unchanged",
}
EVENT_TYPES = {
    config_pb2.WatchEvent.ADDED: "ADDED",
    config_pb2.WatchEvent.MODIFIED: "MODIFIED",
    config_pb2.WatchEvent.DELETED: "DELETED",
}


class UnreachableError(Exception):
    """The control plane could not be reached at all."""


class RequestError(Exception):
    """The control plane answered with an error (its message is kubectl-style)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def default_server() -> str:
    if server := os.environ.get("TULLE_SERVER"):
        return server
    if DEFAULT_SOCKET.exists() and os.access(DEFAULT_SOCKET, os.R_OK | os.W_OK):
        return f"unix:{DEFAULT_SOCKET}"
    return DEFAULT_LISTEN


@dataclass(frozen=True)
class ApplyOutcome:
    outcome: str
    object: Object


class ConfigClient:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        self.server = server
        self.timeout = timeout
        self._channel = grpc.insecure_channel(server, options=MESSAGE_LIMITS)
        self._stub = config_pb2_grpc.ConfigStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not self._connected():
                raise UnreachableError(f"cannot reach tulle-control at {self.server}: {e.details()}") from None
            raise RequestError(code, e.details()) from None

    def _connected(self) -> bool:
        """UNAVAILABLE means either "no connection" or "tulle-control's store is down";
        only in the second case is the channel up."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=0.5)
        except grpc.FutureTimeoutError:
            return False
        return True

    def apply(self, documents: Sequence[Object], dry_run: bool = False) -> tuple[list[ApplyOutcome], int]:
        request = config_pb2.ApplyRequest(documents=[json.dumps(d) for d in documents], dry_run=dry_run)
        response = self._call(self._stub.Apply, request)
        results = [ApplyOutcome(OUTCOMES[r.outcome], json.loads(r.document)) for r in response.results]
        return results, response.revision

    def get(self, kind: str, namespace: str, name: str) -> Object:
        ref = config_pb2.ObjectRef(kind=kind, namespace=namespace, name=name)
        return json.loads(self._call(self._stub.Get, config_pb2.GetRequest(ref=ref)).document)

    def list(self, kind: str, namespace: str = "", label_selector: str = "") -> tuple[list[Object], int]:
        request = config_pb2.ListRequest(kind=kind, namespace=namespace, label_selector=label_selector)
        response = self._call(self._stub.List, request)
        return [json.loads(d) for d in response.documents], response.revision

    def delete(self, kind: str, namespace: str, name: str) -> Object:
        ref = config_pb2.ObjectRef(kind=kind, namespace=namespace, name=name)
        return json.loads(self._call(self._stub.Delete, config_pb2.DeleteRequest(ref=ref)).document)

    def watch(self, kinds: Sequence[str] = (), namespace: str = "", label_selector: str = "",
              revision: int = 0) -> Iterator[tuple[str, Object, int]]:
        request = config_pb2.WatchRequest(kinds=kinds, namespace=namespace, label_selector=label_selector,
                                          revision=revision)
        try:
            for event in self._stub.Watch(request):
                yield EVENT_TYPES[event.type], json.loads(event.document), event.revision
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise RequestError(e.code(), e.details()) from None

    def status(self) -> config_pb2.StatusResponse:
        return self._call(self._stub.Status, config_pb2.StatusRequest())
