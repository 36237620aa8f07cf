"""A DNS cluster's DNS fields, read from Envoy's Cluster message and validated.

Rules (Envoy 1.40):
- Refresh: `dns_refresh_rate` (default 5 s, at least 1 ms), `respect_dns_ttl`, `dns_jitter`
  (not negative) and `dns_failure_refresh_rate` (`base_interval` required, both at least
  1 ms, `max_interval` not below `base_interval`; default 10 * base) make a DnsRefreshConfig
  (proxy/upstream/dns_refresh.py says what they do).
- Resolver: the first set of `typed_dns_resolver_config` (only the c-ares resolver,
  `envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig`),
  `dns_resolution_config`, then the deprecated `dns_resolvers` / `use_tcp_for_dns_lookups`
  gives the ResolverConfig, the precedence of Envoy's selectDnsResolver. Resolver addresses
  are IP socket addresses.
- c-ares' `udp_max_queries` caps the lookups per channel (proxy/upstream/dns_resolver.py).
- Refused, by path: c-ares' `filter_unroutable_families`, `edns0_max_payload_size`,
  `max_udp_channel_duration` and `reinit_channel_on_timeout` (pycares exposes no such channel
  options), and any other resolver extension.
They are read (and checked) on every cluster; only STRICT_DNS and LOGICAL_DNS ones resolve.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join, non_negative_seconds, seconds
from proxy.upstream.dns_refresh import DEFAULT_REFRESH_RATE, DnsRefreshConfig
from proxy.upstream.dns_resolver import ResolverConfig

_CARES = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
_MIN_INTERVAL = 0.001   # Envoy's validation: Durations of at least 1 ms


def dns_refresh_config(message: Cluster, path: str) -> DnsRefreshConfig:
    rate = DEFAULT_REFRESH_RATE
    if message.HasField("dns_refresh_rate"):
        rate = _interval(message.dns_refresh_rate, join(path, "dns_refresh_rate"))
    jitter = non_negative_seconds(message, "dns_jitter", path) or 0.0
    base: float | None = None
    maximum: float | None = None
    if message.HasField("dns_failure_refresh_rate"):
        here = join(path, "dns_failure_refresh_rate")
        failure = message.dns_failure_refresh_rate
        reject_unsupported(failure, here, ("base_interval", "max_interval"))
        if not failure.HasField("base_interval"):
            raise ConfigError(join(here, "base_interval"), "is required")
        base = _interval(failure.base_interval, join(here, "base_interval"))
        if failure.HasField("max_interval"):
            maximum = _interval(failure.max_interval, join(here, "max_interval"))
            if maximum < base:
                raise ConfigError(join(here, "max_interval"), "must be greater than or equal to the base_interval")
    return DnsRefreshConfig(refresh_rate=rate, respect_ttl=message.respect_dns_ttl, jitter=jitter,
                            failure_base=base, failure_max=maximum)


def resolver_config(message: Cluster, path: str) -> ResolverConfig:
    if message.HasField("typed_dns_resolver_config"):
        return _typed_resolver(message.typed_dns_resolver_config, join(path, "typed_dns_resolver_config"))
    if message.HasField("dns_resolution_config"):
        here = join(path, "dns_resolution_config")
        resolution = message.dns_resolution_config
        reject_unsupported(resolution, here, ("resolvers", "dns_resolver_options"))
        use_tcp, no_search = _resolver_options(resolution, here)
        return ResolverConfig(resolvers=_addresses(resolution.resolvers, join(here, "resolvers")),
                              use_tcp=use_tcp, no_default_search_domain=no_search)
    return ResolverConfig(resolvers=_addresses(message.dns_resolvers, join(path, "dns_resolvers")),
                          use_tcp=message.use_tcp_for_dns_lookups)


def _typed_resolver(extension: Message, path: str) -> ResolverConfig:
    from envoy.extensions.network.dns_resolver.cares.v3.cares_dns_resolver_pb2 import (
        CaresDnsResolverConfig,
    )

    reject_unsupported(extension, path, ("name", "typed_config"))
    packed = extension.typed_config
    if not packed.type_url.endswith("/" + _CARES):
        raise ConfigError(join(path, "typed_config"), f"{packed.type_url or 'an empty typed_config'} is not "
                          f"supported (only {_CARES}, Envoy's default resolver)")
    cares = CaresDnsResolverConfig()
    packed.Unpack(cares)
    here = join(path, "typed_config")
    reject_unsupported(cares, here, ("resolvers", "use_resolvers_as_fallback", "dns_resolver_options",
                                     "query_timeout_seconds", "query_tries", "rotate_nameservers",
                                     "udp_max_queries"))
    use_tcp, no_search = _resolver_options(cares, here)
    timeout: float | None = None
    if cares.HasField("query_timeout_seconds"):
        timeout = float(cares.query_timeout_seconds.value)
        if timeout <= 0:
            raise ConfigError(join(here, "query_timeout_seconds"), "must be at least 1")
    tries: int | None = None
    if cares.HasField("query_tries"):
        tries = cares.query_tries.value
        if tries <= 0:
            raise ConfigError(join(here, "query_tries"), "must be at least 1")
    return ResolverConfig(resolvers=_addresses(cares.resolvers, join(here, "resolvers")),
                          resolvers_as_fallback=cares.use_resolvers_as_fallback, use_tcp=use_tcp,
                          no_default_search_domain=no_search, query_timeout=timeout, query_tries=tries,
                          rotate=cares.rotate_nameservers, udp_max_queries=cares.udp_max_queries.value)


def _resolver_options(holder: Message, path: str) -> tuple[bool, bool]:
    if not holder.HasField("dns_resolver_options"):
        return False, False
    options = holder.dns_resolver_options
    reject_unsupported(options, join(path, "dns_resolver_options"),
                       ("use_tcp_for_dns_lookups", "no_default_search_domain"))
    return bool(options.use_tcp_for_dns_lookups), bool(options.no_default_search_domain)


def _addresses(addresses: Iterable[Any], path: str) -> tuple[str, ...]:
    """Resolver addresses as c-ares' "IP:PORT" ("[IPv6]:PORT"); port 0 means 53."""
    import ipaddress

    found: list[str] = []
    for index, address in enumerate(addresses):
        here = f"{path}[{index}]"
        reject_unsupported(address, here, ("socket_address",))
        socket_address = address.socket_address
        there = join(here, "socket_address")
        reject_unsupported(socket_address, there, ("address", "port_value", "protocol"))
        try:
            ip = ipaddress.ip_address(socket_address.address)
        except ValueError:
            raise ConfigError(join(there, "address"), f"{socket_address.address!r} is not an IP address") from None
        port = socket_address.port_value or 53
        found.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    return tuple(found)


def _interval(duration: Message, path: str) -> float:
    value = seconds(duration)
    if value < _MIN_INTERVAL:
        raise ConfigError(path, f"must be at least 1ms, got {value:g}s")
    return value
