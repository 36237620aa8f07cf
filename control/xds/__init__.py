"""tulle-control's xDS server: the mesh model translated into Envoy's v3 resources (and
Tulle's own, for agents) and served over ADS, state-of-the-world and delta, to Envoy,
proxyless gRPC clients and tulle-agent.

Layers, each its own module:
- `mesh`: the store's Kubernetes-shaped documents as a typed, frozen snapshot;
- `sidecar`, `agent`: translation into per-node resources (Istio's shapes for proxies);
- `resources`, `held_versions`: serialized-once resources, per-node sets, client holdings;
- `stream`, `debounce`: the sans-IO protocol core and push debouncing;
- `config`, `server`, `wire`, `client_status`: per-node config, the grpc.aio shell,
  response encoding and CSDS; `service` plugs it all into the tulle-control process;
- `proxy_commands`: `meshctl proxy-status` and `proxy-config`.
"""
