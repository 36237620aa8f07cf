"""The distributed store: a real etcd server, spoken to over etcd's v3 gRPC API.

Several tulle-control replicas share one etcd; each one's writes reach the others'
watches through etcd, so the replicas need nothing else to agree.

Theory of operation (the model's rules map one to one onto etcd's):
- Keys live under a prefix (default `/tulle/`), so one etcd can hold other data.
- `commit` is one etcd Txn: a `MOD == expect` compare per expectation (a missing
  key's mod revision is 0), then the puts and deletes. If a compare fails, the
  failure branch reads the keys so the `ConflictError` can say what was found.
- `watch` is one Watch stream from `after + 1` with `prev_kv` (the last value of a
  deleted key); etcd's events of one revision are delivered together and in order.
  If the connection drops, the stream is reopened from the last revision delivered;
  if etcd reports the start revision compacted, `CompactedError` is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc

from control.store.kv import (
    CompactedError,
    ConflictError,
    Delete,
    Entry,
    Event,
    EventType,
    Op,
    Put,
    Store,
    StoreError,
    check_distinct,
    prefix_end,
)
from proto.etcd.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proto.etcd.mvccpb import kv_pb2

_RECONNECT_DELAY = 0.2
_TIMEOUT = 10.0
# Listing everything is one Range response; etcd itself allows up to 2 GiB.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 64 << 20)]
# etcd's default --max-txn-ops.
DEFAULT_MAX_TXN_OPS = 128


class TransactionTooLargeError(StoreError):
    """More writes in one transaction than the etcd server accepts (its --max-txn-ops)."""


class EtcdStore(Store):
    def __init__(self, endpoint: str, prefix: str = "/tulle/", max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
        self.endpoint = endpoint
        self.prefix = prefix.encode()
        self.url = f"etcd://{endpoint}"
        self.max_txn_ops = max_txn_ops
        self._channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        self._kv = rpc_pb2_grpc.KVStub(self._channel)
        self._watch = rpc_pb2_grpc.WatchStub(self._channel)
        self._maintenance = rpc_pb2_grpc.MaintenanceStub(self._channel)

    async def open(self, timeout: float = _TIMEOUT) -> EtcdStore:
        try:
            status = await self._maintenance.Status(rpc_pb2.StatusRequest(), timeout=timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            raise StoreError(f"cannot reach etcd at {self.endpoint}: {e.details()}") from None
        self.server_version = status.version
        return self

    def _key(self, key: str) -> bytes:
        return self.prefix + key.encode()

    def _entry(self, kv: kv_pb2.KeyValue) -> Entry:
        return Entry(kv.key[len(self.prefix):].decode(), kv.value, kv.create_revision, kv.mod_revision)

    async def _call(self, method: object, request: object) -> object:
        try:
            return await method(request, timeout=_TIMEOUT, wait_for_ready=True)  # type: ignore[operator]
        except grpc.aio.AioRpcError as e:
            raise StoreError(f"etcd at {self.endpoint}: {e.code().name}: {e.details()}") from None

    async def get(self, key: str) -> Entry | None:
        response = await self._call(self._kv.Range, rpc_pb2.RangeRequest(key=self._key(key)))
        assert isinstance(response, rpc_pb2.RangeResponse)
        return self._entry(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        start = self._key(prefix)
        response = await self._call(self._kv.Range, rpc_pb2.RangeRequest(key=start, range_end=prefix_end(start)))
        assert isinstance(response, rpc_pb2.RangeResponse)
        return [self._entry(kv) for kv in response.kvs], response.header.revision

    async def revision(self) -> int:
        # A range over an empty key set still reports the store's revision.
        response = await self._call(self._kv.Range, rpc_pb2.RangeRequest(key=self.prefix, count_only=True))
        assert isinstance(response, rpc_pb2.RangeResponse)
        return int(response.header.revision)

    async def compact(self, revision: int) -> None:
        await self._call(self._kv.Compact, rpc_pb2.CompactionRequest(revision=revision, physical=True))

    async def commit(self, ops: Sequence[Op]) -> int:
        check_distinct(ops)
        if len(ops) > self.max_txn_ops:
            raise TransactionTooLargeError(
                f"{len(ops)} writes in one transaction, more than etcd's limit of {self.max_txn_ops} "
                "(its --max-txn-ops): apply fewer objects at once, or raise the limit on etcd and in the "
                "store URL (etcd://HOST:PORT?max-txn-ops=N)"
            )
        compares = [
            rpc_pb2.Compare(
                result=rpc_pb2.Compare.EQUAL,
                target=rpc_pb2.Compare.MOD,
                key=self._key(op.key),
                mod_revision=op.expect,
            )
            for op in ops
            if op.expect is not None
        ]
        success = []
        for op in ops:
            if isinstance(op, Put):
                success.append(rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=self._key(op.key), value=op.value)))
            else:
                assert isinstance(op, Delete)
                success.append(rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=self._key(op.key))))
        failure = [
            rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=self._key(op.key), keys_only=True))
            for op in ops
            if op.expect is not None
        ]
        request = rpc_pb2.TxnRequest(compare=compares, success=success, failure=failure)
        response = await self._call(self._kv.Txn, request)
        assert isinstance(response, rpc_pb2.TxnResponse)
        if not response.succeeded:
            expecting = [op for op in ops if op.expect is not None]
            for op, result in zip(expecting, response.responses, strict=True):
                kvs = result.response_range.kvs
                actual = kvs[0].mod_revision if kvs else 0
                if actual != op.expect:
                    raise ConflictError(op.key, op.expect or 0, actual)
            raise StoreError("etcd rejected the transaction's compares but every key matches")
        return int(response.header.revision)

    async def watch(self, prefix: str, after: int) -> AsyncIterator[list[Event]]:
        start = self._key(prefix)
        while True:
            requests: asyncio.Queue[rpc_pb2.WatchRequest | None] = asyncio.Queue()
            create = rpc_pb2.WatchCreateRequest(
                key=start, range_end=prefix_end(start), start_revision=after + 1, prev_kv=True
            )
            await requests.put(rpc_pb2.WatchRequest(create_request=create))

            async def outgoing(queue: asyncio.Queue[rpc_pb2.WatchRequest | None] = requests) -> AsyncIterator[rpc_pb2.WatchRequest]:
                while (request := await queue.get()) is not None:
                    yield request

            call = self._watch.Watch(outgoing(), wait_for_ready=True)
            try:
                async for response in call:
                    if response.compact_revision:
                        raise CompactedError(after, response.compact_revision - 1)
                    if response.canceled:
                        raise StoreError(f"etcd canceled the watch: {response.cancel_reason}")
                    for batch in self._batches(response.events):
                        yield batch
                        after = batch[0].revision
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                    raise StoreError(f"etcd watch at {self.endpoint}: {e.code().name}: {e.details()}") from None
                await asyncio.sleep(_RECONNECT_DELAY)
            finally:
                await requests.put(None)
                call.cancel()

    def _batches(self, events: Sequence[kv_pb2.Event]) -> list[list[Event]]:
        batches: list[list[Event]] = []
        for event in events:
            if event.type == kv_pb2.Event.PUT:
                kv = event.kv
                previous = event.prev_kv.value if event.HasField("prev_kv") else None
                converted = Event(
                    EventType.PUT, self._entry(kv).key, kv.mod_revision, kv.value, kv.version == 1, previous
                )
            else:
                converted = Event(
                    EventType.DELETE, self._entry(event.kv).key, event.kv.mod_revision, event.prev_kv.value
                )
            if batches and batches[-1][0].revision == converted.revision:
                batches[-1].append(converted)
            else:
                batches.append([converted])
        return batches

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._channel.close()
