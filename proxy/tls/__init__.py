"""TLS for tulle-proxy: workload identity (local key, CSR, rotation), SSL contexts
built from in-memory PEM, SPIFFE peer identities, and the TLS inspector."""
