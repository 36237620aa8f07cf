"""meshctl: the operator's command line."""
