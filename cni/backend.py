"""The agent's side of tulle-cni: one method per CNI verb, each a sequence of
named steps, as the spec describes them.

Rules:
- ADD undoes everything it created when any later step fails (the allocation,
  the veth pair); the shared bridge is left, as it serves other pods.
- ADD records its address as pending before touching the kernel and marks it
  attached last (see `cni.ipam_store`); `recover()` at agent start-up undoes
  pending ADDs and removes host veths no attachment owns.
- DEL is idempotent and needs neither the namespace nor prevResult: the
  allocation key and the host veth's name are derived from (network, container,
  interface).
- DEL answers once the allocation is durably marked `releasing`; deleting the
  veth (the kernel's slowest step, ~15 ms of RCU synchronisation) and freeing
  the address are queued on the datapath thread right behind it. Every later
  request runs after that (one FIFO thread), the address stays taken until the
  veth is gone, a new ADD of the same attachment finishes the release first,
  and start-up finishes any release an agent killed in between left behind.
- GC releases every attachment of the network not in cni.dev/valid-attachments.
- Policy seam: `PodPolicy.pod_attached` runs after the pod's interface is up and
  before ADD returns, so that a pod selected by a policy is never reachable
  unprotected; if it raises, the ADD fails and is rolled back. The agent passes
  no PodPolicy yet: the nftables applier (netpolicy) plugs in there.

All methods run on one thread (the agent's datapath worker): netlink calls take
microseconds, and serialising them removes every race on the shared bridge and
the pool without locks in this module.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pyroute2 import IPRoute

from cni.bridge import (
    HOST_IFNAME_PREFIX,
    BridgeDatapath,
    configure_pod_interface,
    enable_ip_forward,
    find_link,
    host_ifname,
    pod_addresses,
    step,
)
from cni.errors import CniError, ErrorCode
from cni.ipam import AddressPool
from cni.ipam_store import AllocationKey, AllocationStore
from cni.netconf import NetConf
from cni.netns import netlink_in, open_netns
from cni.request import CniRequest
from cni.result import Interface, IPConfig, Result, Route

log = logging.getLogger("tulle.cni")

DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class PodAttachment:
    """A pod's interface as policy sees it."""

    network: str
    container_id: str
    ifname: str
    address: ipaddress.IPv4Address
    host_ifname: str
    netns: str
    pod_namespace: str
    pod_name: str


class PodPolicy(Protocol):
    def pod_attached(self, pod: PodAttachment) -> None:
        """Programs the pod's policy; called before ADD returns. Raise to fail the ADD."""

    def pod_detached(self, pod: PodAttachment) -> None:
        """Forgets the pod; called by DEL and GC after its interface is gone."""


class _Undo:
    """What an ADD has created so far, undone in reverse on failure."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, action: Callable[[], object]) -> None:
        self._steps.append((what, action))

    def run(self) -> None:
        for what, action in reversed(self._steps):
            try:
                action()
            except Exception:
                log.exception("rollback step failed: %s", what)
        self._steps.clear()


class CniBackend:
    def __init__(
        self,
        store: AllocationStore,
        ipr: IPRoute,
        pod_cidr: ipaddress.IPv4Network | None = None,
        policy: PodPolicy | None = None,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """`defer` queues work on the datapath thread behind the current request;
        without it (tests driving the backend directly) DEL finishes in line."""
        self.store = store
        self.datapath = BridgeDatapath(ipr)
        self.pod_cidr = pod_cidr
        self.policy = policy
        self._defer = defer

    # -- verbs -------------------------------------------------------------

    def handle(self, request: CniRequest) -> dict[str, Any] | None:
        verb = {"ADD": self.add, "DEL": self.delete, "CHECK": self.check, "GC": self.gc, "STATUS": self.status}
        return verb[request.command](request)

    def add(self, req: CniRequest) -> dict[str, Any]:
        conf = req.config
        pool = self.pool(conf)
        key = AllocationKey(conf.name, req.container_id, req.ifname)
        host = host_ifname(conf.name, req.container_id, req.ifname)
        previous = self.store.get(key)
        if previous is not None and previous.state == "releasing":
            self._teardown(key)  # a DEL of this attachment is still finishing: finish it now
        undo = _Undo()
        with open_netns(req.netns) as netns_fd, netlink_in(netns_fd, req.netns) as pod:
            try:
                if find_link(pod, req.ifname) is not None:
                    raise CniError(ErrorCode.INTERFACE_EXISTS, f"interface {req.ifname} already exists in {req.netns}")
                address = self.store.reserve(
                    key, pool, req.requested_ips, host, req.netns, req.pod_namespace, req.pod_name
                )
                undo.push(f"release {address}", lambda: self.store.release(key))
                gateway = ipaddress.IPv4Interface(f"{pool.gateway}/{pool.subnet.prefixlen}")
                bridge = self.datapath.ensure_bridge(conf.bridge, conf.mtu, gateway if conf.is_gateway else None)
                if conf.is_gateway:
                    enable_ip_forward()
                self.datapath.create_veth(host, req.ifname, netns_fd, req.netns, conf.mtu)
                undo.push(f"delete veth {host}", lambda: self.datapath.delete_link(host))
                host_link = self.datapath.attach_to_bridge(host, bridge, conf.hairpin_mode)
                routes = self._routes(conf, pool)
                cidr = ipaddress.IPv4Interface(f"{address}/{pool.subnet.prefixlen}")
                pod_link = configure_pod_interface(
                    pod, req.ifname, req.netns, cidr, routes, pool.gateway if conf.is_gateway else None
                )
                result = Result(
                    interfaces=(
                        Interface(bridge.name, bridge.mac),
                        Interface(host_link.name, host_link.mac),
                        Interface(req.ifname, pod_link.mac, req.netns),
                    ),
                    ips=(IPConfig(cidr, pool.gateway if conf.is_gateway else None, 2),),
                    routes=routes,
                    dns=conf.dns or {},
                )
                # Policy seam: program the pod's policy before the runtime may start it.
                if self.policy is not None:
                    policy, attachment = self.policy, self._attachment(key, address, host, req)
                    policy.pod_attached(attachment)
                    undo.push(f"forget the policy of {address}", lambda: policy.pod_detached(attachment))
                self.store.mark_attached(key, json.dumps(result.to_json(conf.cni_version)))
            except BaseException:
                undo.run()
                raise
        return result.to_json(conf.cni_version)

    def delete(self, req: CniRequest) -> None:
        conf = req.config
        key = AllocationKey(conf.name, req.container_id, req.ifname)
        allocation = self.store.get(key)
        if self._defer is None or allocation is None:
            self._teardown(key)
            return
        if allocation.state != "releasing":
            self.store.mark_releasing(key)
            self._defer(lambda: self._finish_release(key))

    def _finish_release(self, key: AllocationKey) -> None:
        try:
            allocation = self.store.get(key)
            if allocation is not None and allocation.state == "releasing":
                self._teardown(key)
        except Exception:
            # Left as `releasing`: the next ADD of this attachment or the next
            # start-up finishes it.
            log.exception("finishing the release of %s failed", key)

    def check(self, req: CniRequest) -> None:
        conf = req.config
        key = AllocationKey(conf.name, req.container_id, req.ifname)
        what = f"container {req.container_id} interface {req.ifname} on network {conf.name}"
        allocation = self.store.get(key)
        if allocation is None or allocation.state != "attached":
            raise CniError(ErrorCode.CHECK_FAILED, f"{what}: no address is allocated")
        with step(f"look up bridge {conf.bridge}"):
            bridge = find_link(self.datapath.ipr, conf.bridge)
        if bridge is None:
            raise CniError(ErrorCode.CHECK_FAILED, f"{what}: bridge {conf.bridge} is missing")
        with step(f"look up veth {allocation.host_ifname}"):
            host = find_link(self.datapath.ipr, allocation.host_ifname)
        if host is None or host.master != bridge.index:
            raise CniError(ErrorCode.CHECK_FAILED, f"{what}: veth {allocation.host_ifname} is missing or not a port of {conf.bridge}")
        expected = self._expected_addresses(conf, req)
        with open_netns(req.netns) as netns_fd, netlink_in(netns_fd, req.netns) as pod:
            with step(f"look up {req.ifname} in {req.netns}"):
                link = find_link(pod, req.ifname)
            if link is None:
                raise CniError(ErrorCode.CHECK_FAILED, f"{what}: {req.ifname} is missing from {req.netns}")
            with step(f"read addresses of {req.ifname} in {req.netns}"):
                present = pod_addresses(pod, link.index)
        missing = expected - present
        if missing:
            raise CniError(ErrorCode.CHECK_FAILED, f"{what}: address(es) {', '.join(map(str, sorted(missing)))} missing from {req.ifname}")
        if ipaddress.IPv4Interface(f"{allocation.address}/{ipaddress.IPv4Network(allocation.pool).prefixlen}") not in present:
            raise CniError(ErrorCode.CHECK_FAILED, f"{what}: allocated address {allocation.address} missing from {req.ifname}")

    def gc(self, req: CniRequest) -> None:
        conf = req.config
        if conf.valid_attachments is None:
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments: GC needs the list of attachments to keep")
        keep = {(a.container_id, a.ifname) for a in conf.valid_attachments}
        errors = []
        for allocation in self.store.all(network=conf.name):
            if allocation.state == "releasing" or (allocation.key.container_id, allocation.key.ifname) not in keep:
                try:
                    self._teardown(allocation.key)
                except CniError as exc:
                    errors.append(exc.msg)
        if errors:
            raise CniError(ErrorCode.DATAPATH_FAILURE, "GC could not release every stale attachment: " + "; ".join(errors))

    def status(self, req: CniRequest) -> None:
        pool = self.pool(req.config)
        used = sum(1 for a in self.store.all() if a.pool == pool.key)
        if used >= pool.capacity():
            raise CniError(ErrorCode.NOT_AVAILABLE, f"no free address left in {pool.subnet} ({used} of {pool.capacity()} allocated)")

    # -- start-up ----------------------------------------------------------

    def recover(self) -> list[str]:
        """Undoes ADDs a previous agent process did not finish; returns what it did."""
        done = []
        for allocation in self.store.all(state="pending"):
            self.datapath.delete_link(allocation.host_ifname)
            self.store.release(allocation.key)
            done.append(f"rolled back unfinished ADD of {allocation.key.container_id}/{allocation.key.ifname} ({allocation.address})")
        for allocation in self.store.all(state="releasing"):
            self._teardown(allocation.key)
            done.append(f"finished DEL of {allocation.key.container_id}/{allocation.key.ifname} ({allocation.address})")
        owned = {a.host_ifname for a in self.store.all()}
        for name in self.datapath.links_with_prefix(HOST_IFNAME_PREFIX):
            if name not in owned:
                self.datapath.delete_link(name)
                done.append(f"deleted orphan veth {name}")
        return done

    # -- helpers -----------------------------------------------------------

    def pool(self, conf: NetConf) -> AddressPool:
        subnet = conf.ipam.subnet or self.pod_cidr
        if subnet is None:
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "ipam.subnet: missing, and the agent has no node pod CIDR (--pod-cidr)")
        return AddressPool.build(subnet, conf.ipam.gateway, conf.ipam.range_start, conf.ipam.range_end)

    def _routes(self, conf: NetConf, pool: AddressPool) -> tuple[Route, ...]:
        routes = [Route(DEFAULT_ROUTE, pool.gateway)] if conf.is_default_gateway else []
        # As host-local does: a route without "gw" is reported without one, and the
        # kernel route goes through the pod's gateway.
        routes += list(conf.ipam.routes)
        return tuple(routes)

    def _expected_addresses(self, conf: NetConf, req: CniRequest) -> set[ipaddress.IPv4Interface]:
        prev = conf.prev_result
        assert prev is not None
        ours = {i for i, itf in enumerate(prev.interfaces) if itf.name == req.ifname and itf.sandbox}
        return {ip.address for ip in prev.ips if ip.interface in ours}

    def _teardown(self, key: AllocationKey) -> None:
        host = host_ifname(key.network, key.container_id, key.ifname)
        allocation = self.store.get(key)
        self.datapath.delete_link(allocation.host_ifname if allocation else host)
        if allocation is not None:
            if self.policy is not None:
                self.policy.pod_detached(
                    PodAttachment(
                        key.network, key.container_id, key.ifname, allocation.address,
                        allocation.host_ifname, allocation.netns, allocation.pod_namespace, allocation.pod_name,
                    )
                )
            self.store.release(key)

    def _attachment(self, key: AllocationKey, address: ipaddress.IPv4Address, host: str, req: CniRequest) -> PodAttachment:
        return PodAttachment(
            key.network, key.container_id, key.ifname, address, host, req.netns, req.pod_namespace, req.pod_name
        )
