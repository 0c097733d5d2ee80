"""The operator's metrics (operator/vipfarm_operator/metrics.py): families from Farm bodies,
the registry served over real HTTP on 127.0.0.1, and a bad --metrics-address refused."""
from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from vipfarm_operator import metrics
from vipfarm_operator.main import main as operator_main


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


BODIES = [
    {"metadata": {"name": "web"}, "status": {"phase": "Ready", "members": [
        {"node": "n1", "ready": True}, {"node": "n2", "ready": True},
        {"node": "n3", "ready": False, "reason": "HeartbeatLost"}]}},
    {"metadata": {"name": "db"}, "status": {"phase": "Degraded", "members": [
        {"node": "n1", "ready": False, "reason": "Cordoned"}, {"node": "n2", "ready": False}]}},
    {"metadata": {"name": "new"}},
]


def test_farms_by_phase_and_members_by_state_come_from_the_cache_at_scrape_time():
    fams = {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
            for f in metrics.farm_families(BODIES)}
    assert fams["vipfarm_operator_farms"] == {(("phase", "Ready"),): 1, (("phase", "Degraded"),): 1,
                                              (("phase", "Pending"),): 1}
    assert fams["vipfarm_operator_farm_members"] == {
        (("farm", "web"), ("state", "Ready")): 2, (("farm", "web"), ("state", "HeartbeatLost")): 1,
        (("farm", "db"), ("state", "Cordoned")): 1, (("farm", "db"), ("state", "NotReady")): 1}


def test_the_endpoint_serves_reconcile_times_writes_and_the_cached_farms():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(("127.0.0.1", port))
    old_source = metrics.farm_source
    metrics.farm_source = lambda: BODIES
    try:
        before = samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        with metrics.reconciling("farm"):
            pass
        metrics.api_write("farms/status", "patch", "ok")
        after = samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    finally:
        metrics.farm_source = old_source
    key = ("vipfarm_operator_reconcile_seconds_count", (("kind", "farm"),))
    assert after[key] == before.get(key, 0) + 1
    key = ("vipfarm_operator_api_writes_total", (("resource", "farms/status"), ("result", "ok"), ("verb", "patch")))
    assert after[key] == before.get(key, 0) + 1
    assert after[("vipfarm_operator_farms", (("phase", "Ready"),))] == 1


def test_a_bad_metrics_address_is_a_usage_error(capsys):
    assert operator_main(["--metrics-address", "9479"]) == 2
    err = capsys.readouterr().err
    assert "--metrics-address '9479': not HOST:PORT" in err and "--metrics-address off" in err
