"""vipfarm: software-only L4 load balancing for a farm of Linux nodes.

This package is the functional core that the agent (`nodeagent`) and the operator
(`vipfarm_operator`, folder operator/) share: the Farm spec model, the client hash, bucket
assignment, membership, the VIP conflict rule, the FarmNode report model, and the
operator's decisions. It imports neither of them, and its modules compute without touching
the network, the kernel or the API server, with one named exception: kubeconfig.py, the one
loader of API credentials that both share (tests/unit/test_layout.py checks all of it).
"""
__version__ = "0.1.0"
