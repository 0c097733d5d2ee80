"""Cluster tier (it needs the helm the k8s build makes): the chart's optional monitoring
objects. `helm template` with each metrics.* flag renders a PodMonitor, a ServiceMonitor or a
PrometheusRule whose selectors, ports and metric names fit the rest of the chart (the
DaemonSet's and the Deployment's labels and port names, the operator Service, the metric names
of the observability contract), none of them by default, and `helm lint` passes with them.
"""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.support.apiserver import REPO, binary
from tests.support.strict_yaml import load_all_strict

pytestmark = pytest.mark.cluster
NS = "vipfarm-system"
ALL_ON = ["metrics.podMonitor.enabled=true", "metrics.serviceMonitor.enabled=true",
          "metrics.prometheusRule.enabled=true"]
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
# The metric names the agents and the operator export (the observability contract, README
# "Metrics and health endpoints"): an alert on any other name would never fire.
KNOWN_METRICS = {
    "vipfarm_operator_farm_members", "vipfarm_agent_ready", "vipfarm_failovers_total",
    "vipfarm_handover_flows_cut_total", "vipfarm_heartbeats_rejected_total", "vipfarm_members_in_view",
    "vipfarm_recovery_budget_exhausted",
}


@pytest.fixture
def helm(tmp_path):
    env = {"HOME": str(tmp_path), "HELM_CACHE_HOME": str(tmp_path / "cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data"),
           "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary("helm"), *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    return run


def _render(helm, *sets: str) -> dict[str, list[dict]]:
    args = ["template", "vipfarm", "charts/vipfarm", "--namespace", NS]
    for s in sets:
        args += ["--set", s]
    res = helm(*args)
    assert res.returncode == 0, res.stderr
    by_kind: dict[str, list[dict]] = {}
    for doc in load_all_strict(res.stdout):
        if doc:
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def _one(objs: dict[str, list[dict]], kind: str) -> dict:
    assert len(objs.get(kind, [])) == 1, f"expected one {kind}, rendered {len(objs.get(kind, []))}"
    return objs[kind][0]


def _container_ports(workload: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_no_monitoring_object_is_rendered_by_default(helm):
    objs = _render(helm)
    assert not MONITORING_KINDS & set(objs), f"rendered by default: {MONITORING_KINDS & set(objs)}"
    assert _one(objs, "Service")["metadata"]["name"] == "vipfarm-operator"


def test_the_pod_monitor_scrapes_the_agent_pods_observe_port(helm):
    objs = _render(helm, "metrics.podMonitor.enabled=true", "metrics.podMonitor.labels.release=kps",
                   "metrics.podMonitor.interval=15s")
    assert not {"ServiceMonitor", "PrometheusRule"} & set(objs)
    pm, ds, deploy = _one(objs, "PodMonitor"), _one(objs, "DaemonSet"), _one(objs, "Deployment")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == NS and pm["metadata"]["labels"]["release"] == "kps"
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector == ds["spec"]["selector"]["matchLabels"]
    assert _matches(selector, ds["spec"]["template"]["metadata"]["labels"])
    assert not _matches(selector, deploy["spec"]["template"]["metadata"]["labels"]), "it must not scrape the operator"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    [endpoint] = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "observe" and endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    assert _container_ports(ds).get("observe") == 9478, _container_ports(ds)
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in endpoint["relabelings"]


def test_the_service_monitor_scrapes_the_operator_through_its_service(helm):
    objs = _render(helm, "metrics.serviceMonitor.enabled=true")
    assert not {"PodMonitor", "PrometheusRule"} & set(objs)
    sm, svc, deploy, ds = (_one(objs, k) for k in ("ServiceMonitor", "Service", "Deployment", "DaemonSet"))
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["namespace"] == NS
    assert _matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    assert svc["metadata"]["namespace"] == NS
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert _matches(svc["spec"]["selector"], deploy["spec"]["template"]["metadata"]["labels"])
    assert not _matches(svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"])
    [port] = svc["spec"]["ports"]
    assert port == {"name": "metrics", "port": 9479, "targetPort": "metrics", "protocol": "TCP"}
    assert _container_ports(deploy).get("metrics") == 9479, _container_ports(deploy)
    [endpoint] = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


def test_the_prometheus_rule_alerts_on_exported_metrics_with_the_configured_thresholds(helm):
    objs = _render(helm, "metrics.prometheusRule.enabled=true", "metrics.prometheusRule.failoverThreshold=5",
                   "metrics.prometheusRule.failoverWindow=30m", "metrics.prometheusRule.alertLabels.team=net")
    rule = _one(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == NS
    [group] = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {"VipfarmFarmMemberOut", "VipfarmAgentNotReady", "VipfarmFailoversRepeated",
                           "VipfarmHandoverFlowsCut", "VipfarmHeartbeatsRejected", "VipfarmRecoveryBudgetExhausted"}
    for name, r in alerts.items():
        used = set(re.findall(r"\bvipfarm_[a-z_]+", r["expr"]))
        assert used and used <= KNOWN_METRICS, f"{name} uses {used - KNOWN_METRICS or 'no vipfarm metric'}"
        assert r["labels"]["severity"] in ("info", "warning", "critical") and r["labels"]["team"] == "net"
        assert "{{ $labels.farm }}" in r["annotations"]["summary"], f"{name}: Prometheus templating was eaten by helm"
        assert r["annotations"]["description"]
    assert alerts["VipfarmFailoversRepeated"]["expr"] == "max by (farm) (increase(vipfarm_failovers_total[30m])) > 5"
    assert "30m" in alerts["VipfarmFailoversRepeated"]["annotations"]["summary"]
    assert alerts["VipfarmFarmMemberOut"]["for"] == "2m"
    assert 'state!~"Ready|Draining|Drained|Cordoned"' in alerts["VipfarmFarmMemberOut"]["expr"]
    assert alerts["VipfarmHandoverFlowsCut"]["expr"] == "increase(vipfarm_handover_flows_cut_total[10m]) > 0"
    assert "rate(vipfarm_heartbeats_rejected_total[5m])" in alerts["VipfarmHeartbeatsRejected"]["expr"]
    assert "bad_mac" in alerts["VipfarmHeartbeatsRejected"]["annotations"]["description"]
    assert alerts["VipfarmRecoveryBudgetExhausted"]["expr"] == "max by (farm, node) (vipfarm_recovery_budget_exhausted) > 0"


@pytest.mark.parametrize("sets", [[s] for s in ALL_ON] + [ALL_ON], ids=lambda s: "+".join(x.split(".")[1] for x in s))
def test_helm_lint_passes_with_the_monitoring_objects_on(helm, sets):
    args = ["lint", "charts/vipfarm", "--strict"]
    for s in sets:
        args += ["--set", s]
    res = helm(*args)
    assert res.returncode == 0 and "0 chart(s) failed" in res.stdout, res.stdout + res.stderr
    assert "[ERROR]" not in res.stdout and "[WARNING]" not in res.stdout, res.stdout


def test_the_operator_service_and_the_workloads_ports_are_valid_on_the_real_api_server(helm, apiserver, tmp_path):
    ns = "vf-monitoring-dryrun"
    res = helm("template", "vipfarm", "charts/vipfarm", "--namespace", ns, "--show-only", "templates/operator-service.yaml",
               "--show-only", "templates/agent-daemonset.yaml", "--show-only", "templates/operator-deployment.yaml")
    assert res.returncode == 0, res.stderr
    manifest = tmp_path / "workloads.yaml"
    manifest.write_text(res.stdout)
    apiserver.kubectl("create", "namespace", ns, check=False)
    out = apiserver.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(manifest)).stdout
    for obj in ("service/vipfarm-operator", "daemonset.apps/vipfarm-agent", "deployment.apps/vipfarm-operator"):
        assert f"{obj} created (server dry run)" in out, out
