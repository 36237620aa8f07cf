"""tulle-agent: the per-node agent (pod network, IPAM, policy enforcement)."""
