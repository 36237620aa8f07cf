"""The xDS part of the tulle-control process: the ADS server fed by the registry.

A `Component` of `control.plane.ControlPlane`: it adds ADS and CSDS to the control
plane's own server (its root-only unix socket and `--listen-tls` mTLS ports). On start
it reads every object of the kinds translation needs at one revision
(`registry.snapshot`), builds and pushes that config before the first proxy can connect
(the plane opens its ports only after its components started, so no proxy is ever sent
a half-listed, empty mesh), opens the plaintext xDS addresses given (`--xds-listen`,
off by default: Istio's 15010 is for a private network such as a lab's underlay), then
follows the registry's watch from that revision, feeding each change to the server's
debouncer. A watch that fails is resumed from the last revision seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

import grpc

from control.xds.debounce import DebounceConfig
from control.xds.mesh import TRUST_DOMAIN
from control.xds.server import AdsServer

log = logging.getLogger("tulle.control.xds")

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
        self, listen: Sequence[str] = (), debounce: DebounceConfig | None = None, trust_domain: str = TRUST_DOMAIN,
    ) -> None:
        """`listen`: plaintext xDS addresses (`--xds-listen`: HOST:PORT, port 0 picks one,
        or unix:PATH), beside the control plane's own socket and mTLS ports, which
        `register` adds ADS and CSDS to."""
        self.listen = tuple(listen)
        self.ads = AdsServer(debounce, trust_domain)
        self.address = ""  # the first of `listen`, with the port actually bound, after start()
        self._task: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server, plane: _Plane) -> None:
        server.add_generic_rpc_handlers(self.ads.handlers())

    async def start(self, plane: _Plane) -> None:
        registry: _Registry = plane.registry
        objects, revision = await registry.snapshot(KINDS)
        self.ads.replace(obj for kind in KINDS for obj in objects.get(kind, ()))
        self.ads.push_now()
        first, *more = self.listen or ("",)
        port = await self.ads.start(first, also=tuple(more))
        if first:
            self.address = first if first.startswith("unix:") else f"{first.rpartition(':')[0]}:{port}"
            for address in self.listen:
                if not address.startswith("unix:"):
                    log.warning("xDS on %s is plaintext (--xds-listen): whoever reaches it reads any node's "
                                "config; use it on a private network only", address)
        self._task = asyncio.create_task(self._follow(registry, revision), name="xds-watch")
        log.info("xDS (ADS, CSDS) serving on the control plane's socket and mTLS ports%s",
                 f", and plaintext on {', '.join(self.listen)}" if self.listen else "")

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
