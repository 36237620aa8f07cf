"""tulle-proxy: the uvloop sidecar (xDS client, listeners, router, clusters, load
balancing, circuit breaking, retries, mTLS, admin)."""

from proxy import native

native.select()
