"""Test support: code that only the tests and benchmarks use (never shipped, never imported
by vipfarm, nodeagent or vipfarm_operator; tests/unit/test_layout.py checks that)."""
