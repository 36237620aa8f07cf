"""Policy semantics (NetworkPolicy, AdminNetworkPolicy, Baseline…), the nftables
compiler and applier, and tulle-agent, the node agent."""
