"""meshctl's connection to tulle-control: the config API over gRPC, documents as dicts.

Where to connect, first match wins: `--server`, `$TULLE_SERVER`, the local control
plane's unix socket when this user can use it, the control plane of the one lab that is
up (`meshctl lab up`), then 127.0.0.1:15014. Addresses are
`HOST:PORT` or `unix:/path`. A HOST:PORT is spoken to over mTLS with an operator's
credentials (`control.meshctl.credentials`) when given, else in plaintext (a lab's
`--listen` port).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from control.meshctl.credentials import ClientCredentials, CredentialsError, open_channel
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
    if (lab := single_lab_socket("control.sock")) is not None:
        return f"unix:{lab}"
    return DEFAULT_LISTEN


def single_lab_socket(name: str) -> Path | None:
    """`name` in the one lab that runs a control plane (`meshctl lab up`), if only one does."""
    root = Path(os.environ.get("TULLE_LAB_ROOT", "/run/tulle/lab"))
    found = sorted(root.glob(f"*/{name}")) if root.is_dir() else []
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class ApplyOutcome:
    outcome: str
    object: Object


class ConfigClient:
    def __init__(self, server: str, timeout: float = 30.0, credentials: ClientCredentials | None = None) -> None:
        self.server = server
        self.timeout = timeout
        self._credentials = credentials
        try:
            self._channel = open_channel(server, credentials, MESSAGE_LIMITS)
        except CredentialsError as e:
            raise UnreachableError(str(e)) from None
        self._stub = config_pb2_grpc.ConfigStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not self._connected():
                hint = ""
                if self._credentials is None and not self.server.startswith("unix:"):
                    hint = " (its TCP ports speak mTLS unless opened with --listen: give --cert or $TULLE_CERT)"
                raise UnreachableError(f"cannot reach tulle-control at {self.server}: {e.details()}{hint}") from None
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
