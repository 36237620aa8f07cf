"""The xDS part of the tulle-control process: the ADS server fed by the registry.

A `Component` of `control.plane.ControlPlane`: on start it reads every object of the
kinds translation needs at one revision (`registry.snapshot`), builds and pushes that
config before the first proxy can connect (so no proxy is ever sent a half-listed,
empty mesh), starts serving on the xDS address (Istio's plaintext 15010 by default),
then follows the registry's watch from that revision, feeding each change to the
server's debouncer. A watch that fails is resumed from the last revision seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc

from control.xds.debounce import DebounceConfig
from control.xds.mesh import TRUST_DOMAIN
from control.xds.server import AdsServer

log = logging.getLogger("tulle.control.xds")

DEFAULT_XDS_LISTEN = "127.0.0.1:15010"
KINDS = ("Namespace", "Node", "Pod", "Service", "Endpoints", "VirtualService", "DestinationRule", "NetworkPolicy",
         "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "PeerAuthentication", "AuthorizationPolicy")


class _Event(Protocol):
    type: str  # ADDED, MODIFIED, DELETED
    object: Mapping[str, Any]
    revision: int


class _Registry(Protocol):
    async def snapshot(self, kinds: Iterable[str]) -> tuple[dict[str, list[Any]], int]: ...

    def watch(self, kinds: Iterable[str] = (), namespace: str = "", selector: Any = None, since: int = 0) -> AsyncIterator[Any]: ...


class _Plane(Protocol):
    @property
    def registry(self) -> Any: ...


class XdsService:
    def __init__(
        self, listen: str = DEFAULT_XDS_LISTEN, debounce: DebounceConfig | None = None, trust_domain: str = TRUST_DOMAIN,
        tls_listen: str = "", credentials: Callable[[], grpc.ServerCredentials] | None = None,
        also: tuple[str, ...] = (),
    ) -> None:
        """`listen`: the plaintext port ("" for none); `also`: more plaintext addresses
        (e.g. unix:PATH for meshctl next to a lab); `tls_listen`: the mTLS port, with
        `credentials` (called at start, once the CA is loaded)."""
        if tls_listen and credentials is None:
            raise ValueError("an mTLS xDS port needs server credentials")
        self.listen = listen
        self.also = also
        self.tls_listen = tls_listen
        self._credentials = credentials
        self.ads = AdsServer(debounce, trust_domain)
        self.address = ""  # host:port actually bound, after start()
        self.tls_address = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self, plane: _Plane) -> None:
        registry: _Registry = plane.registry
        objects, revision = await registry.snapshot(KINDS)
        self.ads.replace(obj for kind in KINDS for obj in objects.get(kind, ()))
        self.ads.push_now()
        credentials = self._credentials() if self._credentials is not None and self.tls_listen else None
        port = await self.ads.start(self.listen, self.tls_listen, credentials, also=self.also)
        if self.listen:
            self.address = f"{self.listen.rpartition(':')[0]}:{port}"
        if self.tls_listen:
            self.tls_address = f"{self.tls_listen.rpartition(':')[0]}:{self.ads.tls_port}"
        self._task = asyncio.create_task(self._follow(registry, revision), name="xds-watch")
        log.info("xDS (ADS, CSDS) serving on %s", " and ".join(
            a for a in (self.address, self.tls_address and f"{self.tls_address} (mTLS)") if a))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.ads.stop()

    async def _follow(self, registry: _Registry, revision: int) -> None:
        while True:
            try:
                async for event in registry.watch(KINDS, since=revision):
                    revision = max(revision, event.revision)
                    obj = event.object
                    if event.type == "DELETED":
                        meta = obj.get("metadata") or {}
                        self.ads.delete(str(obj["kind"]), str(meta.get("namespace") or ""), str(meta["name"]))
                    else:
                        self.ads.upsert(obj)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry watch failed at revision %d; resuming", revision)
                await asyncio.sleep(1.0)
