"""tulle-cni: the CNI plugin (bridge and VXLAN overlay, IPAM, sidecar interception)
and the lab: simulated nodes and pods in network namespaces."""
