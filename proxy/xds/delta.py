"""The incremental (delta) ADS protocol as a sans-IO state machine.

Rules (Envoy's delta xDS):
- per type, the client keeps the resources it has accepted (name → version and payload)
  and the names it subscribes to; CDS and LDS subscribe to everything (wildcard: the
  first request names no resource);
- a response adds or updates `resources` and drops `removed_resources`; the client builds
  the resulting full set (`candidate`), hands it to the applier, and answers with the
  response's nonce: an ACK commits the candidate, a NACK (with error_detail) keeps the
  previous set;
- subscribing to more or fewer names sends resource_names_subscribe / _unsubscribe;
- on a new stream every subscription is sent again with `initial_resource_versions`, so the
  server sends only what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from google.protobuf.any_pb2 import Any

from proxy.xds.sotw import INVALID_ARGUMENT


@dataclass(slots=True)
class DeltaSubscription:
    type_url: str
    wildcard: bool
    names: set[str] = field(default_factory=set)
    versions: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeltaState:
    node: Node
    subscriptions: dict[str, DeltaSubscription] = field(default_factory=dict)
    _pending: dict[str, tuple[dict[str, str], dict[str, Any]]] = field(default_factory=dict)

    def subscribe(self, type_url: str, names: tuple[str, ...] = (),
                  wildcard: bool = False) -> DeltaDiscoveryRequest | None:
        subscription = self.subscriptions.get(type_url)
        wanted = set(names)
        if subscription is None:
            subscription = self.subscriptions[type_url] = DeltaSubscription(type_url, wildcard)
            subscription.names = wanted
            return DeltaDiscoveryRequest(node=self.node, type_url=type_url,
                                         resource_names_subscribe=sorted(wanted))
        added, removed = wanted - subscription.names, subscription.names - wanted
        if not added and not removed:
            return None
        subscription.names = wanted
        for name in removed:
            subscription.versions.pop(name, None)
            subscription.resources.pop(name, None)
        return DeltaDiscoveryRequest(node=self.node, type_url=type_url,
                                     resource_names_subscribe=sorted(added),
                                     resource_names_unsubscribe=sorted(removed))

    def resubscribe_all(self) -> list[DeltaDiscoveryRequest]:
        return [DeltaDiscoveryRequest(node=self.node, type_url=subscription.type_url,
                                      resource_names_subscribe=sorted(subscription.names),
                                      initial_resource_versions=subscription.versions)
                for subscription in self.subscriptions.values()]

    def candidate(self, response: DeltaDiscoveryResponse) -> list[Any]:
        """The full resource set this response would leave (not committed yet)."""
        subscription = self.subscriptions.get(response.type_url)
        if subscription is None:
            subscription = self.subscriptions[response.type_url] = DeltaSubscription(
                response.type_url, wildcard=False)
        versions = dict(subscription.versions)
        resources = dict(subscription.resources)
        for name in response.removed_resources:
            versions.pop(name, None)
            resources.pop(name, None)
        for resource in response.resources:
            versions[resource.name] = resource.version
            resources[resource.name] = resource.resource
        self._pending[response.type_url] = (versions, resources)
        return list(resources.values())

    def accepted(self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest:
        subscription = self.subscriptions[response.type_url]
        subscription.versions, subscription.resources = self._pending.pop(response.type_url)
        return DeltaDiscoveryRequest(node=self.node, type_url=response.type_url,
                                     response_nonce=response.nonce)

    def rejected(self, response: DeltaDiscoveryResponse, error: str) -> DeltaDiscoveryRequest:
        self._pending.pop(response.type_url, None)
        request = DeltaDiscoveryRequest(node=self.node, type_url=response.type_url,
                                        response_nonce=response.nonce)
        request.error_detail.code = INVALID_ARGUMENT
        request.error_detail.message = error
        return request
