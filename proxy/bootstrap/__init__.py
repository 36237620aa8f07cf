"""Envoy's v3 bootstrap: read (YAML or JSON) into the xds-protos message, then validated
into Tulle's typed configuration. Nothing starts unless the whole file is accepted."""

from proxy.bootstrap.config import BootstrapConfig, load_bootstrap, parse_bootstrap

__all__ = ["BootstrapConfig", "load_bootstrap", "parse_bootstrap"]
