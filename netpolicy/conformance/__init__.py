"""Network-policy conformance: a corpus of cases (topology, steps, expected verdicts)
replayed against a policy engine, with pluggable backends for where pods live and how
policies are applied. The corpus format is the one of ../shared/conformance/netpol."""
