"""The state-of-the-world ADS protocol as a sans-IO state machine: versions, nonces,
subscriptions, ACK and NACK.

Rules (Envoy's xDS protocol, SotW over one aggregated stream):
- every type (CDS, EDS, LDS, RDS) has its own subscription: the resource names (empty
  means "all", used for CDS and LDS), the last *accepted* version and the last nonce seen;
- a response is answered with a request of the same type carrying the response's nonce:
  an ACK carries the response's version, a NACK the previously accepted version and an
  error_detail saying what was wrong (the field path of the first bad resource);
- changing the names of a subscription sends a new request with the current version and
  nonce; an unchanged subscription sends nothing;
- after a reconnect every subscription is sent again with its accepted version, so the
  server can resume instead of resending everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

INVALID_ARGUMENT = 3


@dataclass(slots=True)
class Subscription:
    type_url: str
    names: tuple[str, ...] = ()
    version: str = ""
    nonce: str = ""


@dataclass
class SotwState:
    node: Node
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    def _request(self, subscription: Subscription, error: str | None = None,
                 version: str | None = None) -> DiscoveryRequest:
        request = DiscoveryRequest(
            version_info=subscription.version if version is None else version,
            node=self.node, resource_names=list(subscription.names),
            type_url=subscription.type_url, response_nonce=subscription.nonce)
        if error is not None:
            request.error_detail.code = INVALID_ARGUMENT
            request.error_detail.message = error
        return request

    def subscribe(self, type_url: str, names: tuple[str, ...] = ()) -> DiscoveryRequest | None:
        """Set a subscription's names; the request to send, or None when nothing changed."""
        names = tuple(sorted(set(names)))
        subscription = self.subscriptions.get(type_url)
        if subscription is None:
            subscription = self.subscriptions[type_url] = Subscription(type_url, names)
        elif subscription.names == names:
            return None
        subscription.names = names
        return self._request(subscription)

    def resubscribe_all(self) -> list[DiscoveryRequest]:
        """What to send on a new stream: every subscription, with its accepted version."""
        for subscription in self.subscriptions.values():
            subscription.nonce = ""
        return [self._request(subscription) for subscription in self.subscriptions.values()]

    def accepted(self, response: DiscoveryResponse) -> DiscoveryRequest:
        subscription = self._for(response)
        subscription.version = response.version_info
        subscription.nonce = response.nonce
        return self._request(subscription)

    def rejected(self, response: DiscoveryResponse, error: str) -> DiscoveryRequest:
        subscription = self._for(response)
        subscription.nonce = response.nonce
        return self._request(subscription, error=error)

    def _for(self, response: DiscoveryResponse) -> Subscription:
        subscription = self.subscriptions.get(response.type_url)
        if subscription is None:
            subscription = self.subscriptions[response.type_url] = Subscription(response.type_url)
        return subscription
