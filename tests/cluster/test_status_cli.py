"""Cluster tier: `vipfarm status --cluster` and `kubectl vipfarm status` against the real
kube-apiserver.

A Farm and its members' FarmNodes are created with the statuses the operator and the agents
write (the operator's members, reasons and z1 assignment; each agent's report with its
membership, checks and flowsLeft). The CLI runs as a process with a kubeconfig, as a user
runs it, and the kubectl plugin is found by the real kubectl on PATH, as after `pip install`
(a `kubectl-vipfarm` made from pyproject.toml's entry point, in a bin folder on PATH ahead of
the venv's). Errors are kubectl's; a user with the README's RBAC (get, list on farms and
farmnodes) can read it and one without gets Forbidden and exit 1.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import uuid

import pytest

from vipfarm.assignment import Member, assign
from vipfarm.farm_status import assignment_status
from vipfarm.reports import membership_report
from tests.support.apiserver import kubectl_binary, wait_until_allowed

pytestmark = pytest.mark.cluster
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def user_env(kubeconfig: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    return env


def vipfarm_status(*args: str, kubeconfig: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", "status", *args], capture_output=True, text=True,
                          timeout=60, env=user_env(kubeconfig), cwd=REPO)


@pytest.fixture(scope="module")
def farm(apiserver):
    """A Farm `st-<id>` of 3 members (n2 weight 2 and draining, n3 lost) and FarmNodes for n1, n2."""
    apiserver.kubectl("apply", "-f", os.path.join(REPO, "crds"))
    apiserver.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "crd/farmnodes.vipfarm.io",
                      "--timeout=60s")
    uid = uuid.uuid4().hex[:6]
    name, nodes = f"st-{uid}", [f"st-{uid}-n{k}" for k in (1, 2, 3)]
    n1, n2, n3 = nodes
    apiserver.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
        "spec": {"virtualIPs": ["203.0.113.40", "2001:db8::40"], "interface": "eth0", "buckets": 64,
                 "nodeSelector": {"vipfarm.io/status-test": uid}}}))
    a = assign(None, [Member(n1, 1), Member(n2, 2), Member(n3, 1, live=False)], 64)
    counts = a.counts()
    status = {"phase": "Degraded", "epoch": 5, "assignment": assignment_status(a, 5),
              "members": [{"node": n1, "ready": True, "buckets": counts[n1], "address": "198.51.100.1"},
                          {"node": n2, "ready": True, "buckets": counts[n2], "weight": 2, "address": "198.51.100.2",
                           "flowsLeft": 4},
                          {"node": n3, "ready": False, "buckets": 0, "reason": "HeartbeatLost", "eligible": True}],
              "readyMembers": 2, "totalMembers": 3, "readyText": "2/3", "vipText": "203.0.113.40,2001:db8::40"}
    apiserver.kubectl("patch", "farm", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))
    agreed = membership_report(5, [n1, n2], bytes.fromhex("0011223344556677"), True)
    checks = {"http": {"name": "http", "type": "http", "state": "passing", "detail": "HTTP 200",
                       "since": "2026-12-02T10:00:00Z"}}
    for node, report in ((n1, {"ready": True, "address": "198.51.100.1", "membership": agreed, "checks": checks}),
                         (n2, {"ready": True, "address": "198.51.100.2", "membership": agreed, "flowsLeft": 4})):
        apiserver.kubectl("create", "-f", "-", input=json.dumps(
            {"apiVersion": "vipfarm.io/v1alpha1", "kind": "FarmNode", "metadata": {"name": node}}))
        apiserver.kubectl("patch", "farmnode", node, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"reportedAt": "2026-12-02T10:00:00Z", "farmCount": 1, "readyCount": 1,
                        "farms": {name: report}}}))
    yield {"name": name, "nodes": nodes, "assignment": a}
    apiserver.kubectl("delete", "farm", name, "--wait=false", check=False)
    apiserver.kubectl("delete", "farmnode", n1, n2, "--wait=false", check=False)


def test_status_cluster_json_is_the_farm_view_of_the_farm_and_its_farmnodes(apiserver, farm):
    res = vipfarm_status(farm["name"], "--cluster", "-o", "json", kubeconfig=apiserver.admin_kubeconfig)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    view = json.loads(res.stdout)                      # FARM named: one object, as kubectl get farm X -o json
    n1, n2, n3 = farm["nodes"]
    assert view["name"] == farm["name"] and view["vips"] == ["203.0.113.40", "2001:db8::40"]
    assert view["phase"] == "Degraded" and view["baseEpoch"] == 5 and view["buckets"] == 64
    assert view["owners"] == farm["assignment"].owner_names()
    assert view["view"] == [n1, n2] and view["agreed"] is True        # 2 of the 3 eligible agree
    by = {m["name"]: m for m in view["members"]}
    assert [(by[n]["state"], by[n]["reason"], by[n]["weight"]) for n in (n1, n2, n3)] == [
        ("Serving", "", 1), ("Serving", "", 2), ("Out", "HeartbeatLost", 1)]
    assert by[n1]["local"]["checks"] == [{"name": "http", "state": "Passing", "lastRun": None,
                                          "since": "2026-12-02T10:00:00Z"}]
    assert by[n2]["handingOver"] and by[n2]["local"]["handover"] == {"active": True, "flowsLeft": 4}
    assert by[n3]["local"] is None and by[n1]["reportedAt"] == "2026-12-02T10:00:00Z"


def test_status_cluster_table_and_wide(apiserver, farm):
    n1, n2, n3 = farm["nodes"]
    counts = farm["assignment"].counts()
    res = vipfarm_status(farm["name"], "--kubeconfig", apiserver.admin_kubeconfig, kubeconfig=None)
    assert res.returncode == 0, res.stderr
    header, *lines = res.stdout.splitlines()
    assert header == (f"Farm {farm['name']}: VIPs 203.0.113.40, 2001:db8::40; phase Degraded; view 2/3 agreed, "
                      f"epoch 5; no failover seen")
    rows = [re.split(r"\s{3,}", line) for line in lines]
    assert rows[0] == ["NAME", "STATE", "REASON", "WEIGHT", "BUCKETS", "PACKETS", "LAST-HEARD"]
    assert rows[1][:6] == [n1, "Serving", "-", "1", f"{counts[n1]} ({round(100 * counts[n1] / 64)}%)", "-"]
    assert rows[2][:6] == [n2, "Serving", "-", "2", f"{counts[n2]} ({round(100 * counts[n2] / 64)}%)", "-"]
    assert rows[3] == [n3, "Out", "HeartbeatLost", "1", "0 (0%)", "-", "-"]
    assert re.fullmatch(r"\d+[smhd]", rows[1][6]), rows[1]            # the age of n1's FarmNode report
    wide = vipfarm_status(farm["name"], "--cluster", "-o", "wide", kubeconfig=apiserver.admin_kubeconfig)
    wrows = [re.split(r"\s{3,}", line) for line in wide.stdout.splitlines()[1:]]
    assert wrows[0][7:] == ["ADDRESS", "DROPPED", "HANDOVER", "CHECKS"]
    assert wrows[1][7:] == ["198.51.100.1", "-", "0", "http=Passing"]
    assert wrows[2][7:] == ["198.51.100.2", "-", "4", "-"]


def test_with_a_kubeconfig_and_no_flags_the_cluster_is_read_and_every_farm_listed(apiserver, farm):
    res = vipfarm_status("-o", "yaml", "-A", kubeconfig=apiserver.admin_kubeconfig)
    assert res.returncode == 0, res.stderr
    import yaml
    views = yaml.safe_load(res.stdout)
    assert isinstance(views, list) and farm["name"] in [v["name"] for v in views]


def test_a_missing_farm_is_kubectls_not_found_and_exit_1(apiserver, farm):
    res = vipfarm_status("nosuch", "--cluster", kubeconfig=apiserver.admin_kubeconfig)
    assert res.returncode == 1 and res.stdout == ""
    assert 'Error from server (NotFound): farms.vipfarm.io "nosuch" not found' in res.stderr, res.stderr
    assert "kubectl get farms" in res.stderr


def test_the_documented_rbac_is_enough_and_without_it_forbidden(apiserver, farm, tmp_path):
    ns = f"status-{uuid.uuid4().hex[:6]}"
    role = f"vipfarm-status-{ns}"
    apiserver.kubectl("create", "namespace", ns)
    apiserver.kubectl("-n", ns, "create", "serviceaccount", "viewer")
    cfg = apiserver.kubeconfig_for_token(apiserver.mint_token(ns, "viewer", duration="1h"),
                                         str(tmp_path / "viewer.kubeconfig"))
    try:
        res = vipfarm_status(farm["name"], "--cluster", kubeconfig=cfg)
        assert res.returncode == 1 and res.stdout == ""
        assert "Error from server (Forbidden)" in res.stderr and "get and list" in res.stderr, res.stderr
        # The ClusterRole the README documents (Status).
        apiserver.kubectl("create", "clusterrole", role, "--verb=get,list",
                          "--resource=farms.vipfarm.io,farmnodes.vipfarm.io")
        apiserver.kubectl("create", "clusterrolebinding", role, f"--clusterrole={role}",
                          f"--serviceaccount={ns}:viewer")
        wait_until_allowed(apiserver, cfg, "list", "farmnodes.vipfarm.io")
        res = vipfarm_status(farm["name"], "--cluster", "-o", "json", kubeconfig=cfg)
        assert res.returncode == 0 and json.loads(res.stdout)["name"] == farm["name"], res.stderr
    finally:
        apiserver.kubectl("delete", "clusterrolebinding", role, check=False)
        apiserver.kubectl("delete", "clusterrole", role, check=False)
        apiserver.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def plugin_path(tmp_path):
    """PATH with a `kubectl-vipfarm` made from pyproject.toml's entry point (as pip writes
    console scripts) ahead of the venv's bin, where kubectl is."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        entry = tomllib.load(f)["project"]["scripts"]["kubectl-vipfarm"]
    module, func = entry.split(":")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "kubectl-vipfarm"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    script.chmod(0o755)
    return os.pathsep.join([str(bindir), os.path.dirname(kubectl_binary()), os.environ.get("PATH", "")])


def kubectl_vipfarm(*args: str, kubeconfig: str, path: str) -> subprocess.CompletedProcess:
    env = dict(user_env(kubeconfig), PATH=path)
    return subprocess.run(["kubectl", "vipfarm", *args], capture_output=True, text=True, timeout=60, env=env,
                          cwd=REPO)


def test_kubectl_vipfarm_status_runs_the_same_command_as_a_kubectl_plugin(apiserver, farm, plugin_path):
    cfg = apiserver.admin_kubeconfig
    res = kubectl_vipfarm("status", farm["name"], "--cluster", "-o", "json", kubeconfig=cfg, path=plugin_path)
    assert res.returncode == 0, res.stderr
    same = vipfarm_status(farm["name"], "--cluster", "-o", "json", kubeconfig=cfg)
    assert json.loads(res.stdout) == json.loads(same.stdout)
    table = kubectl_vipfarm("status", farm["name"], kubeconfig=cfg, path=plugin_path)
    assert table.returncode == 0 and table.stdout.startswith(f"Farm {farm['name']}: VIPs 203.0.113.40")
    missing = kubectl_vipfarm("status", "nosuch", kubeconfig=cfg, path=plugin_path)
    assert missing.returncode == 1 and 'farms.vipfarm.io "nosuch" not found' in missing.stderr
    usage = kubectl_vipfarm("status", "--no-such-flag", kubeconfig=cfg, path=plugin_path)
    assert usage.returncode == 2 and "usage: kubectl vipfarm status" in usage.stderr


def test_the_console_reads_the_cluster_and_drains_a_member_only_with_allow_actions(apiserver, farm, tmp_path):
    """`vipfarm console --kubeconfig`: the same farm view as `vipfarm status --cluster`, and with
    --allow-actions its drain button annotates the Node exactly as `vipfarm drain` does."""
    import socket
    import time
    import urllib.request
    n1 = farm["nodes"][0]
    apiserver.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                             "metadata": {"name": n1}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "console.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "nodeagent.cli", "console", "--kubeconfig", apiserver.admin_kubeconfig,
                             "--listen", f"127.0.0.1:{port}", "--allow-actions"], stdout=log, stderr=subprocess.STDOUT,
                            env=user_env(None), cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/farms", timeout=5) as r:
                    doc = json.loads(r.read())
                if any(f["name"] == farm["name"] for f in doc["farms"]):
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, open(tmp_path / "console.log").read()
            time.sleep(0.2)
        assert doc["mode"] == "cluster" and doc["actions"] is True
        [f] = [f for f in doc["farms"] if f["name"] == farm["name"]]
        assert f["owners"] == farm["assignment"].owner_names()
        assert [m["name"] for m in f["members"]] == farm["nodes"]
        req = urllib.request.Request(url + "api/drain", data=json.dumps({"node": n1}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["ok"] is True
        node = json.loads(apiserver.kubectl("get", "node", n1, "-o", "json").stdout)
        assert node["metadata"]["annotations"]["vipfarm.io/drain"] == "true"
        req = urllib.request.Request(url + "api/undrain", data=json.dumps({"node": n1}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["ok"] is True
        node = json.loads(apiserver.kubectl("get", "node", n1, "-o", "json").stdout)
        assert "vipfarm.io/drain" not in (node["metadata"].get("annotations") or {})
    finally:
        proc.terminate()
        proc.wait(10)
        apiserver.kubectl("delete", "node", n1, "--wait=false", check=False)
