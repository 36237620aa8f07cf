"""tulle-control's certificate authority: SPIFFE identities, the CA that signs
workload CSRs, and the rules of who may obtain which identity."""
