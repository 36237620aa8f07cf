"""tulle-control's process: the store, the registry, the derived-state controller and the
config API, started and stopped together on one event loop.

Other parts of the control plane that live in the same process (the xDS server, the
CA) are `Component`s: they add their gRPC services to the plane's server, receive the
running `ControlPlane` — its `registry` to list and watch objects — when it starts, and
are stopped before it. The plane opens its ports only once every component started.

Listening (who may do what on each: `control.caller`, `control.api_authorization`):
- a unix socket (default /run/tulle/control.sock, in a directory only its owner may
  enter, socket mode 0600: root-only when run as root): everything, trusted;
- `listen_tls` (mTLS; `--listen-tls`, by default 127.0.0.1:15014, Istio's port for
  istioctl-style tooling): clients present a certificate from Tulle's CA, and their
  identity decides what they may do;
- `listen` (plaintext; `--listen`, off by default): trusted as it is, for a private
  network only (a lab's underlay); starting one logs a warning.
Every port serves the config API, the CA and xDS (ADS, CSDS).
State: /var/lib/tulle (SQLite). A user other than root gets ~/.local/state/tulle and
$XDG_RUNTIME_DIR/tulle/control.sock instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc

from control.api import ConfigService
from control.ca.component import DEFAULT_TRUST_DOMAIN
from control.controller import DerivedStateController
from control.registry import ClusterConfig, Registry
from control.store import Store, open_store
from proto.tulle.config.v1 import config_pb2_grpc

log = logging.getLogger("tulle.control")



def _default_paths() -> tuple[Path, Path]:
    """Where state and the socket live: the system's places for root, the user's own
    (XDG) places for anyone else, so that a local user can start it with no flags."""
    if os.geteuid() == 0:
        return Path("/var/lib/tulle"), Path("/run/tulle/control.sock")
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tulle"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return state, (Path(runtime) / "tulle" / "control.sock" if runtime else state / "control.sock")


DEFAULT_STATE_DIR, DEFAULT_SOCKET = _default_paths()
DEFAULT_LISTEN = "127.0.0.1:15014"
# A List of a large mesh is one message; gRPC's 4 MiB default is too small for it.
MESSAGE_LIMITS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


@dataclass(frozen=True)
class ControlPlaneConfig:
    store: str = ""  # "" or "sqlite:[PATH]" or "etcd://HOST:PORT"
    state_dir: Path = DEFAULT_STATE_DIR
    socket: Path | None = DEFAULT_SOCKET
    listen: Sequence[str] = ()  # plaintext TCP: for a private network only
    listen_tls: Sequence[str] = ()  # mTLS TCP: needs `credentials` on the ControlPlane
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run_controller: bool = True
    trust_domain: str = DEFAULT_TRUST_DOMAIN


class Component(Protocol):
    async def start(self, plane: ControlPlane) -> None: ...
    async def stop(self) -> None: ...


class ApiComponent(Component, Protocol):
    """A component that also serves gRPC services beside the config API, on the same
    root-only socket and listeners: `register` adds them before the server starts."""

    def register(self, server: grpc.aio.Server, plane: ControlPlane) -> None: ...


class ControlPlane:
    def __init__(self, config: ControlPlaneConfig, components: Sequence[Component] = (),
                 credentials: Callable[[], grpc.ServerCredentials] | None = None) -> None:
        """`credentials`: of the mTLS ports, asked for once the components registered
        (the CA is loaded by then)."""
        if config.listen_tls and credentials is None:
            raise ValueError("mTLS listeners need server credentials")
        self.config = config
        self.components = list(components)
        self._credentials = credentials
        self._store: Store | None = None
        self._registry: Registry | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: TCP addresses the API listens on, with the ports actually bound.
        self.addresses: list[str] = []  # plaintext
        self.tls_addresses: list[str] = []
        self.controller: DerivedStateController | None = None

    @property
    def registry(self) -> Registry:
        assert self._registry is not None, "ControlPlane.start() first"
        return self._registry

    async def start(self) -> None:
        started = time.monotonic()
        self._store = await open_store(self.config.store, self.config.state_dir)
        self._registry = Registry(self._store, self.config.cluster)
        await self._registry.ensure_namespace("default")

        server = grpc.aio.server(options=MESSAGE_LIMITS)
        config_pb2_grpc.add_ConfigServicer_to_server(
            ConfigService(self._registry, started, self.config.trust_domain), server)
        for component in self.components:
            register = getattr(component, "register", None)
            if register is not None:
                register(server, self)
        if self.config.socket is not None:
            self.config.socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.config.socket.unlink()
            server.add_insecure_port(f"unix:{self.config.socket}")
        for address in self.config.listen:
            self.addresses.append(self._add_port(server, address, None))
            log.warning("config API on %s is plaintext (--listen): whoever reaches it may change the mesh "
                        "and read its config; use it on a private network only", address)
        if self.config.listen_tls:
            assert self._credentials is not None
            credentials = self._credentials()
            for address in self.config.listen_tls:
                self.tls_addresses.append(self._add_port(server, address, credentials))
        self._server = server
        if self.config.run_controller:
            self.controller = DerivedStateController(self._registry)
            self._tasks.append(asyncio.create_task(self.controller.run(), name="derived-state"))
        for component in self.components:
            await component.start(self)
        await server.start()
        # Until this chmod the socket's 0700 directory keeps everyone else out.
        if self.config.socket is not None:
            os.chmod(self.config.socket, 0o600)
        log.info("tulle-control serving on %s (store %s)", ", ".join(self.endpoints), self._store.url)

    @staticmethod
    def _add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> str:
        host, _, _ = address.rpartition(":")
        try:
            port = (server.add_insecure_port(address) if credentials is None
                    else server.add_secure_port(address, credentials))
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address}: {e}") from None
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return f"{host}:{port}"

    @property
    def endpoints(self) -> list[str]:
        unix = [f"unix:{self.config.socket}"] if self.config.socket is not None else []
        return unix + self.addresses + self.tls_addresses

    async def stop(self) -> None:
        for component in reversed(self.components):
            await component.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.stop(grace=1.0)
        if self._store is not None:
            await self._store.close()
        if self.config.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket.unlink()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()
