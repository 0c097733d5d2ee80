"""Cluster tier: `vipfarm drain NODE` / `vipfarm undrain NODE` against the real kube-apiserver.

The CLI runs as a process with a kubeconfig, as a user runs it: drain sets the annotation
vipfarm.io/drain=true on the Node, undrain removes it, and what the API server stores is read
back with kubectl. A user holding exactly the RBAC the README documents (get and patch on
nodes) can do both; a missing Node and a user without that RBAC get kubectl-style errors and
exit code 1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from vipfarm.membership import DRAIN_KEY, node_drain_requested
from tests.support.apiserver import wait_until_allowed

pytestmark = pytest.mark.cluster
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def vipfarm(*args: str, kubeconfig: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    env.pop("KUBERNETES_SERVICE_HOST", None)      # never take in-cluster credentials here
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO)


def node_object(apiserver, name: str) -> dict:
    return json.loads(apiserver.kubectl("get", "node", name, "-o", "json").stdout)


@pytest.fixture
def node(apiserver):
    name = f"drain-{uuid.uuid4().hex[:8]}"
    apiserver.kubectl("create", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": {"keep": "me"}}}))
    yield name
    apiserver.kubectl("delete", "node", name, "--wait=false", check=False)


def test_drain_sets_the_annotation_and_undrain_removes_it(apiserver, node):
    cfg = apiserver.admin_kubeconfig
    res = vipfarm("drain", node, kubeconfig=cfg)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"node/{node} draining ({DRAIN_KEY}=true)"
    stored = node_object(apiserver, node)
    assert stored["metadata"]["annotations"] == {"keep": "me", DRAIN_KEY: "true"}
    assert node_drain_requested(stored)

    again = vipfarm("drain", node, kubeconfig=cfg)
    assert again.returncode == 0 and "already draining" in again.stdout, again

    res = vipfarm("undrain", node, kubeconfig=cfg)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"node/{node} undrained ({DRAIN_KEY}=removed)"
    stored = node_object(apiserver, node)
    assert stored["metadata"]["annotations"] == {"keep": "me"}
    assert not node_drain_requested(stored)

    res = vipfarm("undrain", node, kubeconfig=cfg)
    assert res.returncode == 0 and "nothing to remove" in res.stdout, res


def test_undrain_of_a_cordoned_node_warns_that_it_stays_drained(apiserver, node):
    apiserver.kubectl("cordon", node)
    assert node_drain_requested(node_object(apiserver, node))
    cfg = apiserver.admin_kubeconfig
    assert vipfarm("drain", node, kubeconfig=cfg).returncode == 0
    res = vipfarm("undrain", node, kubeconfig=cfg)
    assert res.returncode == 0, res.stderr
    assert f"node/{node} is still cordoned" in res.stderr and f"kubectl uncordon {node}" in res.stderr
    assert DRAIN_KEY not in node_object(apiserver, node)["metadata"]["annotations"]


@pytest.mark.parametrize("cmd", ["drain", "undrain"])
def test_a_missing_node_is_a_kubectl_style_not_found_error(apiserver, cmd):
    res = vipfarm(cmd, "no-such-node", kubeconfig=apiserver.admin_kubeconfig)
    assert res.returncode == 1 and res.stdout == ""
    assert 'Error from server (NotFound): nodes "no-such-node" not found' in res.stderr, res.stderr
    assert "kubectl get nodes" in res.stderr


def test_the_documented_rbac_is_enough_and_less_is_forbidden(apiserver, node, tmp_path):
    ns = f"drain-{uuid.uuid4().hex[:6]}"
    apiserver.kubectl("create", "namespace", ns)
    apiserver.kubectl("-n", ns, "create", "serviceaccount", "ops")
    cfg = apiserver.kubeconfig_for_token(apiserver.mint_token(ns, "ops", duration="1h"),
                                         str(tmp_path / "ops.kubeconfig"))
    try:
        res = vipfarm("drain", node, kubeconfig=cfg)
        assert res.returncode == 1
        assert "Error from server (Forbidden)" in res.stderr and "needs the verbs get and patch" in res.stderr, \
            res.stderr
        assert DRAIN_KEY not in node_object(apiserver, node)["metadata"]["annotations"]

        # The ClusterRole the README documents (Drain): get and patch on nodes, nothing more.
        apiserver.kubectl("create", "clusterrole", f"vipfarm-drain-{ns}", "--verb=get,patch", "--resource=nodes")
        apiserver.kubectl("create", "clusterrolebinding", f"vipfarm-drain-{ns}",
                          f"--clusterrole=vipfarm-drain-{ns}", f"--serviceaccount={ns}:ops")
        wait_until_allowed(apiserver, cfg, "patch", f"node/{node}")
        assert vipfarm("drain", node, kubeconfig=cfg).returncode == 0
        assert node_object(apiserver, node)["metadata"]["annotations"][DRAIN_KEY] == "true"
        assert vipfarm("undrain", node, kubeconfig=cfg).returncode == 0
        assert DRAIN_KEY not in node_object(apiserver, node)["metadata"]["annotations"]
    finally:
        apiserver.kubectl("delete", "clusterrolebinding", f"vipfarm-drain-{ns}", check=False)
        apiserver.kubectl("delete", "clusterrole", f"vipfarm-drain-{ns}", check=False)
        apiserver.kubectl("delete", "namespace", ns, "--wait=false", check=False)
