"""The chart rendered by the real helm over every shipped values file, the objects parsed and
checked, `helm lint` on each, and values.schema.json refusing mistyped values.

No API server: `helm template` and `helm lint` render offline (tests/cluster/test_control_plane.py
installs and upgrades the chart on a real one)."""
from __future__ import annotations

import glob
import os
import subprocess

import pytest
import yaml

from tests.support.apiserver import binary
from tests.support.strict_yaml import load_all_strict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(REPO, "charts", "vipfarm")
EXAMPLES = sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml")))
CASES = [None] + EXAMPLES        # None: the defaults
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("helm"), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def render(values: str | None = None, *sets: str) -> list[dict]:
    args = ["template", "vipfarm", CHART, "--namespace", "vipfarm-system"]
    if values:
        args += ["-f", values]
    for s in sets:
        args += ["--set", s]
    res = helm(*args)
    assert res.returncode == 0, res.stderr
    return load_all_strict(res.stdout)


def values_of(path: str | None) -> dict:
    if not path:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def case_id(path):
    return "defaults" if path is None else os.path.basename(path)


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_helm_lint_passes(values):
    res = helm("lint", CHART, *(["-f", values] if values else []))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_every_object_carries_the_app_kubernetes_io_labels(values):
    for d in render(values):
        labels = d["metadata"].get("labels") or {}
        missing = [k for k in LABELS if not labels.get(k)]
        assert not missing, f"{d['kind']}/{d['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["app.kubernetes.io/part-of"] == "vipfarm"
        if d["kind"] in ("DaemonSet", "Deployment"):
            tlabels = d["spec"]["template"]["metadata"]["labels"]
            assert not [k for k in LABELS if not tlabels.get(k)], d["metadata"]["name"]


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_the_agent_is_unprivileged_with_exactly_the_measured_capabilities(values):
    ds = one(render(values), "DaemonSet", "vipfarm-agent")
    spec = ds["spec"]["template"]["spec"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    sc = agent["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "BPF", "PERFMON", "SYS_NICE"}
    assert spec["hostNetwork"] is True
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf" and mounts["bpffs"]["mountPropagation"] == "HostToContainer"
    assert {"lib-modules", "usr-src", "run-vipfarm"} <= set(mounts)
    hostpaths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    assert hostpaths["bpffs"] == "/sys/fs/bpf" and hostpaths["lib-modules"] == "/lib/modules"
    inits = spec.get("initContainers") or []
    mount_bpffs = (values_of(values).get("agent", {}).get("mountBpffs") or {}).get("enabled", True)
    # The only privileged container is the init container that mounts bpffs (Bidirectional).
    assert [c["name"] for c in inits] == (["mount-bpffs"] if mount_bpffs else [])
    for c in inits:
        assert c["securityContext"] == {"privileged": True}
        assert c["volumeMounts"] == [{"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"}]


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_probes_use_ports_the_containers_declare(values):
    docs = render(values)
    seen = 0
    for kind, name in (("DaemonSet", "vipfarm-agent"), ("Deployment", "vipfarm-operator")):
        for c in one(docs, kind, name)["spec"]["template"]["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
            for probe in ("livenessProbe", "readinessProbe"):
                if probe in c:
                    seen += 1
                    port = c[probe]["httpGet"]["port"]
                    assert port in ports, f"{name} {probe} uses port {port!r}, declared: {ports}"
    v = values_of(values)
    probes_on = (v.get("agent", {}).get("observe") or {}).get("enabled", True)
    assert seen == (3 if probes_on else 0), seen     # agent live + ready, operator live


def test_the_default_probes_are_the_observe_and_kopf_liveness_endpoints():
    docs = render()
    agent = one(docs, "DaemonSet", "vipfarm-agent")["spec"]["template"]["spec"]["containers"][0]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "observe"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "observe"}
    assert {"name": "observe", "containerPort": 9478, "protocol": "TCP"} in agent["ports"]
    assert "--observe-address=[$(HOST_IP)]:9478" in agent["args"]
    op = one(docs, "Deployment", "vipfarm-operator")["spec"]["template"]["spec"]["containers"][0]
    assert "--liveness=http://0.0.0.0:8080/healthz" in op["args"]
    assert op["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_priority_class_tolerations_and_image(values):
    docs, v = render(values), values_of(values)
    spec = one(docs, "DaemonSet", "vipfarm-agent")["spec"]["template"]["spec"]
    want_pc = v.get("agent", {}).get("priorityClassName", "system-node-critical")
    assert spec.get("priorityClassName", "") == want_pc
    assert spec.get("tolerations", []) == v.get("agent", {}).get("tolerations", [])
    image = v.get("image", {})
    want = (f"{image['repository']}@{image['digest']}" if image.get("digest") else "vipfarm/vipfarm:0.1.0")
    images = {c["image"] for d in docs if d["kind"] in ("DaemonSet", "Deployment")
              for c in d["spec"]["template"]["spec"].get("initContainers", []) + d["spec"]["template"]["spec"]["containers"]}
    assert images == {want}


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_crds_are_templates_kept_on_uninstall_and_equal_to_crds(values):
    docs, v = render(values), values_of(values)
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    if not v.get("crds", {}).get("install", True):
        assert crds == {}
        return
    sources = {}
    for path in glob.glob(os.path.join(REPO, "crds", "*.yaml")):
        with open(path) as f:
            doc = yaml.safe_load(f)
        sources[doc["metadata"]["name"]] = doc
    assert set(crds) == set(sources)
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["spec"] == sources[name]["spec"], name


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_the_operator_pdb_exists_only_with_more_than_one_replica(values):
    docs, v = render(values), values_of(values)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    replicas = v.get("operator", {}).get("replicas", 2)
    if replicas > 1:
        (pdb,) = pdbs
        assert pdb["spec"]["minAvailable"] == 1
        dep = one(docs, "Deployment", "vipfarm-operator")
        assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    else:
        assert pdbs == []


def test_the_peering_object_is_a_hook_created_after_the_crds():
    peering = one(render(), "ClusterKopfPeering")
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


@pytest.mark.parametrize("sets, says", [
    (["agent.tolerations=x"], "/agent/tolerations': got string, want array"),
    (["agnet.logLevel=info"], "additional properties 'agnet' not allowed"),
    (["agent.privileged=true"], "additional properties 'privileged' not allowed"),
    (["agent.logLevel=verbose"], "/agent/logLevel': value must be one of"),
    (["operator.replicas=two"], "/operator/replicas': got string, want integer"),
    (["crds.install=yes"], "/crds/install': got string, want boolean"),
    (["image.digest=latest"], "/image/digest'"),
    (["metrics.podMonitor.enabled=maybe"], "/metrics/podMonitor/enabled': got string, want boolean"),
], ids=lambda x: x[0] if isinstance(x, list) else None)
def test_the_schema_refuses_a_mistyped_value(sets, says):
    for cmd in ("template", "lint"):
        args = [cmd, CHART] if cmd == "lint" else [cmd, "vipfarm", CHART]
        for s in sets:
            args += ["--set", s]
        res = helm(*args)
        assert res.returncode != 0, f"helm {cmd} accepted {sets}"
        assert says in res.stdout + res.stderr, res.stdout + res.stderr


def test_the_schema_allows_the_monitoring_switches():
    docs = render(None, "metrics.podMonitor.enabled=false", "metrics.serviceMonitor.enabled=false",
                  "metrics.prometheusRule.enabled=false", "metrics.podMonitor.labels.release=kps")
    assert one(docs, "DaemonSet", "vipfarm-agent")


def test_the_console_is_an_operator_sidecar_behind_the_service_only_when_enabled():
    default = render()
    op = one(default, "Deployment", "vipfarm-operator")
    assert [c["name"] for c in op["spec"]["template"]["spec"]["containers"]] == ["operator"]
    assert "console" not in [p["name"] for p in one(default, "Service", "vipfarm-operator")["spec"]["ports"]]

    docs = render(None, "console.enabled=true")
    pod = one(docs, "Deployment", "vipfarm-operator")["spec"]["template"]["spec"]
    [console] = [c for c in pod["containers"] if c["name"] == "console"]
    assert console["command"] == ["vipfarm", "console", "--cluster", "--listen", "0.0.0.0:9480"]
    assert {"name": "console", "containerPort": 9480, "protocol": "TCP"} in console["ports"]
    assert console["readinessProbe"]["httpGet"]["port"] == "console"
    assert console["securityContext"]["readOnlyRootFilesystem"] is True
    svc = one(docs, "Service", "vipfarm-operator")
    assert {"name": "console", "port": 9480, "targetPort": "console", "protocol": "TCP"} in svc["spec"]["ports"]
    role = one(docs, "ClusterRole", "vipfarm-operator")
    assert not any("patch" in r["verbs"] and "nodes" in r["resources"] for r in role["rules"])   # read-only

    acting = render(None, "console.enabled=true", "console.allowActions=true")
    pod = one(acting, "Deployment", "vipfarm-operator")["spec"]["template"]["spec"]
    [console] = [c for c in pod["containers"] if c["name"] == "console"]
    assert console["command"][-1] == "--allow-actions"
    role = one(acting, "ClusterRole", "vipfarm-operator")
    assert any(r["resources"] == ["nodes"] and r["verbs"] == ["patch"] for r in role["rules"])


def test_the_schema_refuses_a_mistyped_console_value():
    res = helm("template", "vipfarm", CHART, "--set", "console.enabeld=true")
    assert res.returncode != 0 and "enabeld" in res.stderr
