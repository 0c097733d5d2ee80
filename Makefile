# vipfarm. Every target installs what it needs first (scripts/install.sh, idempotent, root).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST := scripts/run-pytest.sh

.PHONY: install install-fast test test-fast test-unit test-bpf test-lab test-cluster demo bench clean

install:
	bash scripts/install.sh

install-fast:
	bash scripts/install.sh --no-k8s

## Every tier: unit, BPF, lab, cluster.
test: install
	$(PYTEST) --durations=25 tests/unit tests/bpf tests/lab tests/cluster

## Quick loop: unit and BPF tiers.
test-fast: install-fast
	$(PYTEST) tests/unit tests/bpf

test-unit: install-fast
	$(PYTEST) tests/unit

test-bpf: install-fast
	$(PYTEST) tests/bpf

test-lab: install-fast
	$(PYTEST) tests/lab

test-cluster: install
	$(PYTEST) tests/cluster

## The lab demo: 3 namespace nodes, real agents, real traffic, the per-node distribution,
## a crash and its failover time, a rejoin and a drain under long-lived connections.
demo: install-fast
	$(VENV)/bin/vipfarm lab demo

## Every benchmark (about 12 minutes); figures and method in bench/RESULTS.md.
bench: install
	$(PY) bench/filter_cost.py
	$(PY) bench/drop_path.py
	$(PY) bench/control_plane.py
	$(PY) bench/failover.py

clean:
	rm -rf .pytest_cache .hypothesis build *.egg-info
