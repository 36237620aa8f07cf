"""tulle-proxy's xDS client: Envoy's Aggregated Discovery Service (state of the world) over
gRPC, so any xDS server (tulle-control, go-control-plane, ...) can drive the proxy."""
