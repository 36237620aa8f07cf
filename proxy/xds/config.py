"""`dynamic_resources` of the bootstrap: where the ADS server is and what it provides.

Rules: one ADS stream (`ads_config`, api_type GRPC or DELTA_GRPC, transport V3) to an
`envoy_grpc` cluster of static_resources that speaks HTTP/2; `lds_config` and `cds_config`,
when set, must say `ads: {}`. Other config sources are rejected by path.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.core.v3.config_source_pb2 import ApiConfigSource, ConfigSource

from proxy.config_error import ConfigError, reject_unsupported
from proxy.proto_config import join


@dataclass(frozen=True, slots=True)
class AdsConfig:
    cluster: str                 # the static cluster of the ADS server
    delta: bool                  # DELTA_GRPC (incremental) rather than GRPC (state of the world)
    lds: bool                    # listeners come over ADS
    cds: bool                    # clusters come over ADS

    @classmethod
    def from_proto(cls, message: Bootstrap.DynamicResources, path: str) -> AdsConfig:
        reject_unsupported(message, path, ("ads_config", "lds_config", "cds_config"))
        if not message.HasField("ads_config"):
            raise ConfigError(join(path, "ads_config"), "is required (only ADS is supported)")
        ads = message.ads_config
        here = join(path, "ads_config")
        reject_unsupported(ads, here, ("api_type", "transport_api_version", "grpc_services",
                                       "set_node_on_first_message_only"))
        if ads.api_type not in (ApiConfigSource.GRPC, ApiConfigSource.DELTA_GRPC):
            raise ConfigError(join(here, "api_type"), f"{ApiConfigSource.ApiType.Name(ads.api_type)} "
                              "is not supported (GRPC, DELTA_GRPC)")
        if len(ads.grpc_services) != 1:
            raise ConfigError(join(here, "grpc_services"), "exactly one gRPC service is required")
        service = ads.grpc_services[0]
        at = f"{here}.grpc_services[0]"
        reject_unsupported(service, at, ("envoy_grpc", "timeout"))
        if not service.HasField("envoy_grpc") or not service.envoy_grpc.cluster_name:
            raise ConfigError(join(at, "envoy_grpc.cluster_name"), "is required")
        reject_unsupported(service.envoy_grpc, join(at, "envoy_grpc"), ("cluster_name",))
        return cls(cluster=service.envoy_grpc.cluster_name,
                   delta=ads.api_type == ApiConfigSource.DELTA_GRPC,
                   lds=_ads_source(message, "lds_config", path),
                   cds=_ads_source(message, "cds_config", path))


def _ads_source(message: Bootstrap.DynamicResources, field: str, path: str) -> bool:
    if not message.HasField(field):
        return False
    source: ConfigSource = getattr(message, field)
    here = join(path, field)
    reject_unsupported(source, here, ("ads", "resource_api_version", "initial_fetch_timeout"))
    if not source.HasField("ads"):
        raise ConfigError(here, "only `ads: {}` is supported")
    return True
