"""vipfarm: software-only L4 load balancing for a farm of Linux nodes.

This package is the functional core that the agent (`nodeagent`) and the operator
(`vipfarm_operator`, folder operator/) share: the Farm spec model, the client hash, bucket
assignment, membership, the VIP conflict rule, the FarmNode report model, and the
operator's decisions. It does no network or API I/O and imports neither of them
(tests/unit/test_layout.py checks both).
"""
__version__ = "0.1.0"
