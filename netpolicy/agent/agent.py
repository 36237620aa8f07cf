"""tulle-agent's core: the node's CNI backend and overlay, and the operations
its socket serves.

Threading: every kernel and state operation runs on one worker thread (the
"datapath" thread, see `cni.backend`); the event loop only moves bytes. The
netlink handle and the allocation store are created on that thread and never
leave it.

Operations (requests on the agent socket, framing in `cni.wire`):
- `cni`        one CNI invocation from tulle-cni: {env, stdin} -> {exit, stdout}
- `set-nodes`  the overlay's node list (tulle.netpolicy.v1.Node, JSON form);
               reconciled into VXLAN routes/neighbours/FDB entries (standalone
               agents; SIGHUP re-reads --nodes-file). With a control plane the list
               arrives on the ADS stream instead.
- `status`     the node, its pod CIDR, overlay peers and attachment count
- `attachments` every pod interface the node holds

With a control plane (`ControlLink`), the node registered itself before the agent
starts (its pod CIDR comes from there); `start` then recovers attachments, opens the
ADS stream and returns once the first complete policy state is in force
(`netpolicy.agent.node_policy`), so the socket only serves CNI calls on a node whose
pods get their rules. Services on the same stream program the node's ClusterIP table
(`netpolicy.agent.node_services`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from cni.backend import CniBackend
from cni.errors import CniError, ErrorCode
from cni.ipam_store import AllocationStore
from cni.overlay import NodeListError, OverlayNode, parse_nodes
from cni.request import decode_config, parse_request, reply_version
from cni.vxlan import VxlanOverlay
from netpolicy.agent.control_link import AdsClient, ConfigApi, PodStatusReporter
from netpolicy.agent.node_policy import NodePolicy
from netpolicy.agent.node_services import SERVICE, NodeServices
from netpolicy.applier import NftApplier
from netpolicy.enforcer import NodeEnforcer

log = logging.getLogger("tulle.agent")


@dataclass(frozen=True)
class AgentConfig:
    node: str
    socket_path: Path
    state_dir: Path
    pod_cidr: ipaddress.IPv4Network | None = None
    nodes_file: Path | None = None
    control: ControlLink | None = None
    dns_port: int = 53  # cluster DNS on the pods' gateway (with a control plane); 0: none

    @property
    def dns_address(self) -> ipaddress.IPv4Address | None:
        """The pods' gateway (the first address of the pod CIDR), where cluster DNS answers."""
        if self.control is None or self.pod_cidr is None or not self.dns_port:
            return None
        return next(self.pod_cidr.hosts())


@dataclass(frozen=True)
class ControlLink:
    """Where tulle-control is, and who this node is on the underlay."""

    api: ConfigApi
    xds: str
    underlay_ip: ipaddress.IPv4Address
    sync_timeout: float = 60.0


class NodeAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datapath")
        self._backend: CniBackend | None = None
        self._overlay: VxlanOverlay | None = None
        self._ipr: IPRoute | None = None
        self._nodes: list[OverlayNode] = []
        self.policy: NodePolicy | None = None
        self.services: NodeServices | None = None
        self._ads: AdsClient | None = None
        self._reporter: PodStatusReporter | None = None

    # Called from the event loop; each runs its body on the datapath thread.
    def start(self) -> list[str]:
        done = self._worker.submit(self._start).result()
        link = self.config.control
        if link is not None:
            assert self.policy is not None
            self._ads = AdsClient(link.xds, self.config.node, link.underlay_ip, self._on_resources, link.api.tls)
            self._ads.start()
            if not self.policy.started.wait(link.sync_timeout):
                raise TimeoutError(f"no complete policy state from tulle-control at {link.xds} "
                                   f"within {link.sync_timeout:.0f}s")
        return done

    def _on_resources(self, type_url: str, resources: Any, removed: list[str], replace_all: bool) -> str | None:
        """ADS thread: runs the change on the datapath thread; the result is the ACK/NACK."""
        assert self.policy is not None and self.services is not None
        if type_url == SERVICE:
            return self._worker.submit(self.services.on_resources, resources, removed, replace_all).result()
        return self._worker.submit(self.policy.on_resources, type_url, resources, removed, replace_all).result()

    def run(self, op: str, request: Mapping[str, Any]) -> Any:
        handlers = {
            "cni": self._cni,
            "set-nodes": self._set_nodes,
            "status": self._status,
            "attachments": self._attachments,
        }
        handler = handlers.get(op)
        if handler is None:
            return {"error": f"unknown op {op!r}; expected one of {', '.join(handlers)}"}
        return handler(request)

    @property
    def worker(self) -> ThreadPoolExecutor:
        return self._worker

    def close(self) -> None:
        if self._ads is not None:
            self._ads.close()
        if self._reporter is not None:
            self._reporter.close()

        def _close() -> None:
            if self._backend is not None:
                self._backend.store.close()
            if self._ipr is not None:
                self._ipr.close()

        self._worker.submit(_close).result()
        self._worker.shutdown()

    # -- on the datapath thread ---------------------------------------------

    def _start(self) -> list[str]:
        # groups=0: no multicast subscriptions, so no event backlog to wade through per call.
        self._ipr = IPRoute(groups=0)
        store = AllocationStore(self.config.state_dir / "allocations.db")
        self._overlay = VxlanOverlay(self._ipr)
        link = self.config.control
        if link is not None:
            # Policy seam: the node's policy programs each pod's rules before ADD returns.
            self._reporter = PodStatusReporter(link.api, self.config.node)
            self.policy = NodePolicy(self.config.node, NodeEnforcer(self.config.node, NftApplier()), link.api,
                                     self._reporter, self._apply_nodes)
            self.policy.recover(store.all())
            self.services = NodeServices(NftApplier())
        # Without a control plane there are no policies: pods are attached unfiltered.
        self._backend = CniBackend(store, self._ipr, self.config.pod_cidr, policy=self.policy, defer=self._worker.submit)
        done = self._backend.recover()
        if self.config.nodes_file is not None:
            self._apply_nodes(self._read_nodes_file(self.config.nodes_file))
        return done

    def reload_nodes_file(self) -> None:
        """Re-reads --nodes-file (on SIGHUP); a bad file is logged and changes nothing."""
        if self.config.nodes_file is None:
            log.warning("SIGHUP: no --nodes-file to reload")
            return
        try:
            self._apply_nodes(self._read_nodes_file(self.config.nodes_file))
        except (OSError, ValueError, CniError) as exc:
            log.error("SIGHUP: node list %s not applied: %s", self.config.nodes_file, exc)

    @staticmethod
    def _read_nodes_file(path: Path) -> list[OverlayNode]:
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise NodeListError(f"{path} is not valid JSON: {exc}") from None
        return parse_nodes(raw)

    def _cni(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self._backend is not None
        decoded: Any = None
        try:
            env = request.get("env")
            stdin = request.get("stdin")
            if not isinstance(env, dict) or not isinstance(stdin, str):
                raise CniError(ErrorCode.DECODE_FAILURE, "agent request needs 'env' (object) and 'stdin' (string)")
            decoded = decode_config(stdin)
            result = self._backend.handle(parse_request(env, decoded))
            return {"exit": 0, "stdout": json.dumps(result) if result is not None else ""}
        except CniError as exc:
            if exc.code < 100 or exc.code == ErrorCode.DATAPATH_FAILURE:
                log.info("CNI %s failed: %s", request.get("env", {}).get("CNI_COMMAND"), exc.msg)
            return {"exit": 1, "stdout": json.dumps(exc.to_json(reply_version(decoded)))}
        except Exception as exc:
            log.exception("CNI request failed")
            error = CniError(ErrorCode.DATAPATH_FAILURE, f"tulle-agent internal error: {exc!r}")
            return {"exit": 1, "stdout": json.dumps(error.to_json(reply_version(decoded)))}

    def _set_nodes(self, request: Mapping[str, Any]) -> dict[str, Any]:
        try:
            nodes = parse_nodes(request.get("nodes"))
            self._apply_nodes(nodes)
        except (NodeListError, CniError) as exc:
            return {"error": str(exc)}
        return {"ok": True, "peers": len(nodes) - 1}

    def _apply_nodes(self, nodes: list[OverlayNode]) -> None:
        assert self._overlay is not None
        self._overlay.apply(self.config.node, nodes)
        self._nodes = nodes
        log.info("overlay programmed for %d peer node(s)", len(nodes) - 1)

    def _status(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self._backend is not None
        return {
            "node": self.config.node,
            "podCidr": str(self.config.pod_cidr) if self.config.pod_cidr else None,
            "peers": [n.name for n in self._nodes if n.name != self.config.node],
            "attachments": len(self._backend.store.all()),
        }

    def _attachments(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self._backend is not None
        return {
            "attachments": [
                {
                    "network": a.key.network,
                    "containerID": a.key.container_id,
                    "ifname": a.key.ifname,
                    "address": str(a.address),
                    "hostIfname": a.host_ifname,
                    "netns": a.netns,
                    "state": a.state,
                    "podNamespace": a.pod_namespace,
                    "podName": a.pod_name,
                }
                for a in self._backend.store.all()
            ]
        }
