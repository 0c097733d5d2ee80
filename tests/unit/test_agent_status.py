"""The /status document, readiness and member states, from plain inputs; the metric families
from the same inputs, parsed back from the Prometheus text format."""
from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.agent_metrics import metric_families
from nodeagent.bpf_consts import COUNTER_NAMES
from vipfarm.agent_status import AgentInput, CheckInput, FarmInput, MemberInput, farm_not_ready, status_document
from vipfarm.farm_timeline import Programmed, Timeline, record
from vipfarm.handover import HandoverTotals

MS = 1_000_000
MEMBERS = (MemberInput("n1", "198.51.100.1", 1), MemberInput("n2", "198.51.100.2", 2),
           MemberInput("n3", "198.51.100.3", 1))


def failed_over_timeline() -> Timeline:
    w = {"n1": 1, "n2": 2, "n3": 1}
    t = record(Timeline(), Programmed(0, "t0", w, frozenset(w), frozenset(), {}))
    return record(t, Programmed(1000 * MS, "2026-01-01T00:00:01Z", w, frozenset({"n1", "n2"}), frozenset(),
                                {"n3": 588 * MS}))


def farm(**kw) -> FarmInput:
    base = dict(name="web", vips=("203.0.113.10", "2001:db8::10"), interface="eth0", buckets=8, members=MEMBERS,
                programmed=True, view=frozenset({"n1", "n2"}), agreed=True, base_epoch=3,
                owners=("n1", "n2", "n2", "n1", "n2", "n2", "n1", None), owned=3,
                counters={n: i * 10 for i, n in enumerate(COUNTER_NAMES)},
                heartbeat_counts={"sent": 40, "heartbeat_accepted": 19, "rejected_bad_mac": 2,
                                  "heartbeat_replayed": 1},
                last_heard_ms={"n2": 50, "n3": 900}, timeout_ms=300,
                checks=(CheckInput("http", "passing", "2026-01-01T00:00:00Z", {"pass": 7, "timeout": 1},
                                   {"ok": 1}),),
                handover=HandoverTotals(started=2, flows_drained=5, flows_cut=1), flows_left=0,
                timeline=failed_over_timeline())
    base.update(kw)
    return FarmInput(**base)


def agent(*farms, **kw) -> AgentInput:
    return AgentInput("n1", "standalone", "2026-01-01T00:00:02Z", tuple(farms), kw.get("counts", {}))


def test_status_document_has_the_contract_fields_and_values():
    doc = status_document(agent(farm()))
    json.dumps(doc)     # serialisable as it is
    assert {k: doc[k] for k in ("schemaVersion", "node", "mode", "ready", "generatedAt")} == {
        "schemaVersion": 1, "node": "n1", "mode": "standalone", "ready": True, "generatedAt": "2026-01-01T00:00:02Z"}
    (f,) = doc["farms"]
    assert f["view"] == ["n1", "n2"] and f["agreed"] is True and f["baseEpoch"] == 3 and f["buckets"] == 8
    assert f["owners"] == ["n1", "n2", "n2", "n1", "n2", "n2", "n1", None] and f["ownedBuckets"] == 3
    members = {m["name"]: m for m in f["members"]}
    assert members["n1"] == {"name": "n1", "address": "198.51.100.1", "weight": 1, "state": "Serving",
                             "reason": "InView", "buckets": 3, "lastHeardMs": None, "handingOver": False}
    assert (members["n2"]["buckets"], members["n2"]["lastHeardMs"]) == (4, 50)
    assert (members["n3"]["state"], members["n3"]["reason"], members["n3"]["buckets"]) == ("Out", "HeartbeatTimeout", 0)
    assert f["counters"]["accepted"] == 0 and f["counters"]["dropped"] == 10 and set(f["counters"]) == set(COUNTER_NAMES)
    assert f["heartbeats"] == {"sent": 40, "received": 19, "rejected": {"bad_mac": 2, "replay": 1, "malformed": 0}}
    assert f["checks"] == [{"name": "http", "state": "Passing", "lastRun": "2026-01-01T00:00:00Z", "recoveryRuns": 1}]
    assert f["handover"] == {"active": False, "flowsLeft": 0, "flowsDrained": 5, "flowsCut": 1}
    assert f["lastFailover"] == {"at": "2026-01-01T00:00:01Z", "lost": ["n3"], "durationMs": 412}
    assert f["events"] == [{"at": "2026-01-01T00:00:01Z", "kind": "Failover", "nodes": ["n3"], "durationMs": 412}]


def test_member_states_withdrawn_draining_drained_and_out():
    f = farm(view=frozenset(MEMBERS[i].name for i in range(3)), withdrawn=frozenset({"n1", "n3"}),
             draining=frozenset({"n2"}), handing_over=frozenset({"n2"}), self_reason="CheckerFailing")
    states = {m["name"]: (m["state"], m["reason"], m["handingOver"]) for m in status_document(agent(f))["farms"][0]["members"]}
    assert states == {"n1": ("Withdrawn", "CheckerFailing", False), "n2": ("Draining", "Drain", True),
                      "n3": ("Withdrawn", "ChecksFailing", False)}
    drained = farm(view=frozenset({"n1", "n2"}), draining=frozenset({"n2"}), last_heard_ms={"n2": 10})
    members = status_document(agent(drained))["farms"][0]["members"]
    assert [(m["name"], m["state"], m["reason"]) for m in members] == [
        ("n1", "Serving", "InView"), ("n2", "Drained", "Drain"), ("n3", "Out", "NeverHeard")]
    alone = farm(view=frozenset())
    assert status_document(agent(alone))["farms"][0]["members"][0]["reason"] == "NoQuorum"


def test_readiness_needs_a_programmed_filter_and_a_recent_peer():
    assert farm_not_ready(farm()) is None
    assert "not programmed" in farm_not_ready(farm(programmed=False))
    late = farm(last_heard_ms={"n2": 301, "n3": 900})
    assert farm_not_ready(late) == "farm web: no heartbeat from any peer accepted within timeoutMs (300 ms)"
    assert status_document(agent(farm(), late))["ready"] is False
    single = farm(members=MEMBERS[:1], last_heard_ms={})
    assert farm_not_ready(single) is None       # a farm of one has no peer to hear
    assert status_document(agent(farm(programmed=False)))["farms"][0]["owners"] == ["n1", "n2", "n2", "n1", "n2",
                                                                                 "n2", "n1", None]
    assert status_document(agent(farm(owners=())))["farms"][0]["owners"] == [None] * 8


class _Fixed:
    def __init__(self, a):
        self.a = a

    def collect(self):
        return metric_families(self.a)

    def describe(self):
        return []


def scrape(a: AgentInput) -> dict:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(a))
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metric_families_carry_the_snapshot_values():
    m = scrape(agent(farm(), counts={"sent": 40, "heartbeat_accepted": 19, "rejected_bad_mac": 2,
                                     "heartbeat_replayed": 1, "rejected_unknown_key": 4, "rejected_truncated": 1}))
    def v(name, **labels):
        return m[(name, tuple(sorted(labels.items())))]
    for i, n in enumerate(COUNTER_NAMES):
        if n.startswith("neigh_"):
            assert ("vipfarm_packets_total", (("farm", "web"), ("iface", "eth0"), ("verdict", n))) not in m
        else:
            assert v("vipfarm_packets_total", farm="web", iface="eth0", verdict=n) == i * 10
    assert v("vipfarm_neighbour_replies_total", farm="web", iface="eth0") == 20
    assert v("vipfarm_malformed_frames_total", farm="web", iface="eth0") == 40
    assert v("vipfarm_buckets_owned", farm="web") == 3 and v("vipfarm_buckets", farm="web") == 8
    assert v("vipfarm_members_in_view", farm="web") == 2 and v("vipfarm_agent_ready", farm="web") == 1
    assert v("vipfarm_heartbeats_sent_total", farm="web") == 40
    assert v("vipfarm_heartbeats_received_total", farm="web") == 19
    assert v("vipfarm_heartbeats_rejected_total", farm="web", reason="bad_mac") == 2
    assert v("vipfarm_heartbeats_rejected_total", farm="web", reason="replay") == 1
    assert v("vipfarm_heartbeats_rejected_total", farm="web", reason="malformed") == 0
    assert v("vipfarm_heartbeats_rejected_total", farm="", reason="unknown_key") == 4
    assert v("vipfarm_heartbeats_rejected_total", farm="", reason="truncated") == 1
    assert v("vipfarm_heartbeat_gap_seconds", farm="web", peer="n2") == 0.05
    assert v("vipfarm_heartbeat_gap_seconds", farm="web", peer="n3") == 0.9
    assert v("vipfarm_failovers_total", farm="web") == 1
    assert v("vipfarm_failover_duration_seconds_count", farm="web") == 1
    assert abs(v("vipfarm_failover_duration_seconds_sum", farm="web") - 0.412) < 1e-9
    assert v("vipfarm_failover_duration_seconds_bucket", farm="web", le="0.4") == 0
    assert v("vipfarm_failover_duration_seconds_bucket", farm="web", le="0.5") == 1
    assert v("vipfarm_handovers_total", farm="web") == 2
    assert v("vipfarm_handover_flows_drained_total", farm="web") == 5
    assert v("vipfarm_handover_flows_cut_total", farm="web") == 1
    assert v("vipfarm_handover_flows_left", farm="web") == 0
    assert v("vipfarm_checker_runs_total", farm="web", checker="http", result="pass") == 7
    assert v("vipfarm_checker_runs_total", farm="web", checker="http", result="timeout") == 1
    assert v("vipfarm_checker_runs_total", farm="web", checker="http", result="fail") == 0
    assert v("vipfarm_recovery_runs_total", farm="web", checker="http", result="ok") == 1
    assert v("vipfarm_recovery_runs_total", farm="web", checker="http", result="failed") == 0
    assert v("vipfarm_recovery_budget_exhausted", farm="web") == 0


def test_a_node_out_for_its_used_up_recovery_budget_says_so():
    m = scrape(agent(farm(self_reason="RecoveryBudgetExhausted")))
    assert m[("vipfarm_recovery_budget_exhausted", (("farm", "web"),))] == 1


def test_a_farm_not_ready_exports_agent_ready_zero():
    m = scrape(agent(farm(programmed=False)))
    assert m[("vipfarm_agent_ready", (("farm", "web"),))] == 0
