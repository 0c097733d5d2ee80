"""The namespace lab: a farm of network namespaces on one machine, with real agents, real
servers and bounded real traffic. It backs `make demo` / `vipfarm demo` and the lab and
cluster test tiers. The agent itself never imports it (tests/unit/test_layout.py checks)."""
