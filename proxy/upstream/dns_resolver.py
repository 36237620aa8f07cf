"""The DNS resolver of STRICT_DNS and LOGICAL_DNS clusters: c-ares, as Envoy's.

Envoy resolves cluster names with c-ares (its default resolver, `envoy.network.dns_resolver.
cares`); so does tulle-proxy, through pycares (the same library, bundled) and aiodns (its
asyncio binding). Using the library itself rather than imitating it keeps what operators rely
on identical: /etc/resolv.conf (nameservers, search, ndots, timeout, attempts, rotate) and
/etc/hosts (c-ares' `lookups`, files then DNS) are read the way Envoy reads them, and every
answer carries its TTL — what `respect_dns_ttl` needs and getaddrinfo(3) cannot tell.

Rules (Envoy's c-ares resolver, source/extensions/network/dns_resolver/cares/dns_impl.cc):
- An address's TTL is the smaller of its record's and of every CNAME's on the way.
- A name with no records (NODATA, NXDOMAIN) is an answer with no addresses; any other error
  (timeout, SERVFAIL, refused, ...) is a failure (DnsFailure).
- `dns_lookup_family`: V4_ONLY asks A, V6_ONLY AAAA; AUTO asks AAAA, then A only if that
  gave no address; V4_PREFERRED the other way round; ALL asks both at once and takes both
  (IPv4 first). Several queries answer if any of them answered.
- Addresses keep the answer's order (c-ares' ARES_AI_NOSORT, as Envoy asks): a LOGICAL_DNS
  cluster's host is the first one.
- Resolver settings (ResolverConfig): `resolvers` replace resolv.conf's nameservers (with
  `use_resolvers_as_fallback`, only when resolv.conf names none); `use_tcp_for_dns_lookups`,
  `no_default_search_domain`, `query_timeout_seconds`, `query_tries`, `rotate_nameservers`
  set c-ares' options of the same meaning. Clusters with the same settings share a channel.
- `udp_max_queries` (Istio sets 100): c-ares sends at most that many queries from one UDP
  socket, then opens another (a new source port, against spoofed answers). pycares cannot
  pass the option, so the cap is kept one level up: after that many lookups on a channel the
  next lookup opens a new channel (new sockets, new ports), and the old one is closed when its
  last lookup ends. A lookup counts as one query: one that walks search domains or retries
  sends a few more from the same socket, so the cap is on lookups, not packets. (c-ares
  closes a socket with no query in flight, so only lookups in flight together share one.)

Thin I/O: the decisions about when to ask again are proxy/upstream/dns_refresh.py's.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any, Protocol

FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
_ARES_AI_NOSORT = 1 << 7   # ares.h; pycares does not export it
_NO_RECORDS = frozenset((1, 4))   # ARES_ENODATA, ARES_ENOTFOUND
_CARES_DEFAULT_SERVER = "127.0.0.1:53"   # what c-ares uses when resolv.conf names none


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """c-ares settings from a cluster's typed_dns_resolver_config, dns_resolution_config or
    the older dns_resolvers / use_tcp_for_dns_lookups (all default: resolv.conf's)."""

    resolvers: tuple[str, ...] = ()   # "IP:PORT" or "[IPv6]:PORT"
    resolvers_as_fallback: bool = False
    use_tcp: bool = False
    no_default_search_domain: bool = False
    query_timeout: float | None = None
    query_tries: int | None = None
    rotate: bool = False
    udp_max_queries: int = 0   # lookups per channel (0: no cap)


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """A completed resolution: the addresses in answer order, and each one's TTL (seconds)."""

    addresses: tuple[str, ...] = ()
    ttls: tuple[float, ...] = ()


class DnsFailure(Exception):
    """The resolver gave no answer (timeout, SERVFAIL, refused, ...)."""


class DnsResolver(Protocol):
    async def resolve(self, name: str, family: str) -> DnsAnswer:
        """Raises DnsFailure when no query of the family's answered."""
        ...


class CaresResolver:
    """A c-ares channel with one ResolverConfig, made on first use (it needs the running loop)."""

    def __init__(self, config: ResolverConfig) -> None:
        self.config = config
        self._channel: Any = None
        self._lookups = 0   # begun on the current channel (udp_max_queries)
        self._in_flight: dict[Any, int] = {}   # channel -> its lookups not yet ended

    def _resolver(self) -> Any:
        cap = self.config.udp_max_queries
        if self._channel is not None and cap and self._lookups >= cap:
            self._retire(self._channel)
            self._channel = None
        if self._channel is None:
            self._lookups = 0
            import aiodns
            import pycares

            config = self.config
            flags = ((pycares.ARES_FLAG_USEVC if config.use_tcp else 0)
                     | (pycares.ARES_FLAG_NOSEARCH if config.no_default_search_domain else 0))
            options: dict[str, Any] = {"flags": flags or None, "rotate": config.rotate}
            if config.query_timeout is not None:
                options["timeout"] = config.query_timeout
            if config.query_tries is not None:
                options["tries"] = config.query_tries
            channel = aiodns.DNSResolver(loop=asyncio.get_running_loop(), **options)
            if config.resolvers:
                servers = list(channel._channel.servers)
                if not config.resolvers_as_fallback or servers in ([], [_CARES_DEFAULT_SERVER]):
                    channel._channel.servers = list(config.resolvers)
            self._channel = channel
        return self._channel

    async def resolve(self, name: str, family: str) -> DnsAnswer:
        answer: DnsAnswer | None
        if family == "ALL":
            # Both at once. (Not asyncio.gather: compiled, its typeshed tuple meets a list.)
            v4 = asyncio.ensure_future(self._query(name, socket.AF_INET))
            v6 = await self._query(name, socket.AF_INET6)
            answer = _combine(await v4, v6)
        else:
            answer = await self._in_order(name, family)
        if answer is None:
            raise DnsFailure(f"no answer for {name}")
        return answer

    async def _in_order(self, name: str, family: str) -> DnsAnswer | None:
        first, second = {"V4_ONLY": (socket.AF_INET, None), "V6_ONLY": (socket.AF_INET6, None),
                         "AUTO": (socket.AF_INET6, socket.AF_INET),
                         "V4_PREFERRED": (socket.AF_INET, socket.AF_INET6)}[family]
        answer = await self._query(name, first)
        if second is not None and (answer is None or not answer.addresses):
            answer = _combine(answer, await self._query(name, second))
        return answer

    async def _query(self, name: str, family: int) -> DnsAnswer | None:
        """One getaddrinfo of one family: its answer, or None if it failed."""
        import aiodns

        channel = self._resolver()
        self._lookups += 1
        self._in_flight[channel] = self._in_flight.get(channel, 0) + 1
        try:
            result = await channel.getaddrinfo(name, family=family, flags=_ARES_AI_NOSORT)
        except aiodns.error.DNSError as error:
            if error.args and error.args[0] in _NO_RECORDS:
                return DnsAnswer()
            return None
        finally:
            self._lookup_ended(channel)
        cname_ttl = min((cname.ttl for cname in result.cnames), default=None)
        addresses: list[str] = []
        ttls: list[float] = []
        for node in result.nodes:
            if node.family != family:
                continue
            address = node.addr[0]
            address = address.decode() if isinstance(address, bytes) else str(address)
            addresses.append(address)
            ttls.append(float(node.ttl if cname_ttl is None else min(node.ttl, cname_ttl)))
        return DnsAnswer(tuple(addresses), tuple(ttls))

    def _lookup_ended(self, channel: Any) -> None:
        left = self._in_flight[channel] - 1
        if left:
            self._in_flight[channel] = left
            return
        del self._in_flight[channel]
        if channel is not self._channel:   # retired while this lookup ran
            self._retire(channel)

    def _retire(self, channel: Any) -> None:
        """Close a channel replaced under udp_max_queries, once no lookup is using it."""
        if channel not in self._in_flight:
            channel.cancel()
            channel._cleanup()   # aiodns' close() without the await: its timer and socket watches

    def close(self) -> None:
        for channel in {*self._in_flight, self._channel} - {None}:
            self._in_flight.pop(channel, None)
            self._retire(channel)
        self._channel = None


def _combine(first: DnsAnswer | None, second: DnsAnswer | None) -> DnsAnswer | None:
    if first is None:
        return second
    if second is None:
        return first
    return DnsAnswer(first.addresses + second.addresses, first.ttls + second.ttls)


# config -> (the loop its channel delivers to, the resolver); a new loop replaces them
_resolvers: dict[ResolverConfig, tuple[object, CaresResolver]] = {}


def resolver_for(config: ResolverConfig) -> CaresResolver:
    """The resolver shared by the clusters with this config, on the running loop."""
    loop = asyncio.get_running_loop()
    entry = _resolvers.get(config)
    if entry is None or entry[0] is not loop:
        if entry is not None:
            entry[1].close()
        entry = _resolvers[config] = (loop, CaresResolver(config))
    return entry[1]
