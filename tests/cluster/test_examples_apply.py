"""Cluster tier: every Farm file in examples/ is accepted by the real API server with the Farm
CRD (OpenAPI schema + CEL rules), as `kubectl apply -f examples/...` sends it.

Server-side dry run (nothing is stored, validating admission still runs) with strict field
validation, so a field the CRD does not know is an error, not silently pruned. The standalone
files are Farm objects too (their spec.nodes and heartbeat.keyFile are in the schema), so they
are sent as well. tests/unit/test_examples.py checks what each file's comments promise.
"""
from __future__ import annotations

import glob
import os

import pytest

from tests.support.apiserver import REPO

pytestmark = pytest.mark.cluster
EXAMPLES = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "examples", "**", "*.yaml"),
                                                               recursive=True))


@pytest.fixture(scope="module")
def farm_crd(apiserver):
    apiserver.kubectl("apply", "-f", os.path.join(REPO, "crds"))
    apiserver.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "--timeout=60s")
    return apiserver


def test_there_are_examples_to_apply():
    assert "examples/web.yaml" in EXAMPLES and "examples/standalone/web.yaml" in EXAMPLES, EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES)
def test_kubectl_apply_of_the_example_is_accepted_by_the_farm_crd(farm_crd, path):
    res = farm_crd.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", path, check=False)
    assert res.returncode == 0, f"kubectl apply -f {path} was refused:\n{res.stderr}"
    assert "farm.vipfarm.io/" in res.stdout and "(server dry run)" in res.stdout, res.stdout


def test_a_broken_example_would_be_refused(farm_crd, tmp_path):
    # The check above can fail: the same file with one field made invalid is refused, naming it.
    with open(os.path.join(REPO, "examples", "web.yaml"), encoding="utf-8") as f:
        text = f.read()
    broken = tmp_path / "web-broken.yaml"
    broken.write_text(text.replace('virtualIPs: ["203.0.113.10"]', 'virtualIPs: ["203.0.113.300"]'))
    assert broken.read_text() != text
    res = farm_crd.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(broken), check=False)
    assert res.returncode != 0 and "virtualIPs" in res.stderr, res.stdout + res.stderr
