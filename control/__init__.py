"""tulle-control: the control plane (store, mesh model, xDS server, CA) and meshctl."""
