"""vipfarm: software-only L4 load balancing for a farm of Linux nodes.

This package is the shared functional core (spec model, client hash, bucket assignment)
plus the `vipfarm` command line. The agent lives in `nodeagent`, the operator in
`vipfarm_operator` (folder operator/).
"""
__version__ = "0.1.0"
