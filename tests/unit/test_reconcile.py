"""The operator's pure decisions (vipfarm.reconcile), without Kopf or an API server."""
from __future__ import annotations

from vipfarm.assignment import Assignment
from vipfarm.reconcile import (FarmRef, NodeInfo, decide, decision_view, farms_changed, node_info, owned_by,
                               previous_assignment)
from vipfarm.spec import parse_farm

NOW = "2026-11-25T00:00:00Z"


def farm(name="web", vips=("203.0.113.10",), selector=None, buckets=1024):
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
                       "spec": {"virtualIPs": list(vips), "buckets": buckets,
                                "nodeSelector": selector or {}}})


def reports(*names, ready=True):
    """The agents' reports for one Farm, as the operator reads them from the FarmNodes."""
    return {n: {"ready": ready} for n in names}


NODES = [NodeInfo("n1"), NodeInfo("n2", weight=2), NodeInfo("n3")]


def test_node_info_reads_ready_cordon_drain_and_weight():
    n = node_info("n1", {"zone": "a"}, {"vipfarm.io/weight": "3", "vipfarm.io/drain": "true"},
                  [{"type": "Ready", "status": "True"}], True)
    assert (n.ready, n.unschedulable, n.draining, n.weight) == (True, True, True, 3)
    assert node_info("n2", {}, {}, [{"type": "Ready", "status": "False"}], None).ready is False


def test_a_bad_weight_annotation_falls_back_to_1_and_says_how_to_fix_it():
    n = node_info("n1", {}, {"vipfarm.io/weight": "heavy"}, [], None)
    assert n.weight == 1
    assert "vipfarm.io/weight='heavy'" in n.weight_problem and "kubectl annotate node n1" in n.weight_problem


def test_three_ready_members_get_a_weighted_balanced_assignment():
    d = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    assert d.status["phase"] == "Ready" and d.status["readyText"] == "3/3"
    assert d.assignment.counts() == {"n1": 256, "n2": 512, "n3": 256}
    assert d.status["epoch"] == 1
    assert {c["type"]: c["status"] for c in d.status["conditions"]} == {
        "Ready": "True", "Degraded": "False", "Conflict": "False"}
    assert [e.reason for e in d.events] == ["MembershipChanged"]
    assert "joined: n1, n2, n3" in d.events[0].message and "epoch 1" in d.events[0].message


def test_a_weight_change_alone_is_a_rebalanced_event():
    first = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    heavier = [NodeInfo("n1", weight=2), NodeInfo("n2", weight=2), NodeInfo("n3")]
    d = decide(farm(), 1, "t1", heavier, [], first.status, reports("n1", "n2", "n3"), NOW)
    assert [e.reason for e in d.events] == ["Rebalanced"]
    assert "epoch 2" in d.events[0].message


def test_members_without_an_agent_report_get_no_buckets():
    d = decide(farm(), 1, "t1", NODES, [], {}, reports("n1"), NOW)
    assert d.assignment.counts() == {"n1": 1024, "n2": 0, "n3": 0}
    assert {m["node"]: m.get("reason") for m in d.status["members"]}["n2"] == "AgentMissing"
    assert d.status["phase"] == "Degraded"


def test_a_not_ready_node_loses_only_its_own_buckets_and_rejoins():
    first = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    down = [NodeInfo("n1"), NodeInfo("n2", weight=2, ready=False), NodeInfo("n3")]
    second = decide(farm(), 1, "t1", down, [], first.status, reports("n1", "n2", "n3"), NOW)
    before, after = first.assignment.owner_names(), second.assignment.owner_names()
    moved = [b for b in range(1024) if before[b] != after[b]]
    assert len(moved) == 512 and all(before[b] == "n2" for b in moved)
    assert second.status["epoch"] == 2 and second.status["phase"] == "Degraded"
    third = decide(farm(), 1, "t1", NODES, [], second.status, reports("n1", "n2", "n3"), NOW)
    assert third.assignment.counts() == {"n1": 256, "n2": 512, "n3": 256}
    assert third.status["epoch"] == 3


def test_cordon_and_drain_annotation_take_a_node_out():
    for n2 in (NodeInfo("n2", unschedulable=True), NodeInfo("n2", draining=True)):
        d = decide(farm(), 1, "t1", [NodeInfo("n1"), n2], [], {}, reports("n1", "n2"), NOW)
        assert d.assignment.counts()["n2"] == 0
        assert {m["node"]: m.get("reason") for m in d.status["members"]}["n2"] in ("Cordoned", "Draining")


def test_an_unchanged_world_keeps_the_epoch_and_emits_nothing():
    first = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    again = decide(farm(), 1, "t1", NODES, [], first.status, reports("n1", "n2", "n3"), "later")
    assert again.status["epoch"] == first.status["epoch"]
    assert again.events == []
    assert again.status["conditions"] == first.status["conditions"]   # transition times kept


def test_the_later_farm_claiming_a_vip_gets_conflict_and_no_owners():
    others = [FarmRef("old", "2026-01-01T00:00:00Z", ("203.0.113.10",))]
    d = decide(farm("new"), 1, "2026-02-01T00:00:00Z", NODES, others, {}, reports("n1", "n2", "n3"), NOW)
    assert d.status["phase"] == "Conflict"
    assert set(d.assignment.counts().values()) == {0}
    conflict = next(c for c in d.status["conditions"] if c["type"] == "Conflict")
    assert conflict["status"] == "True" and "203.0.113.10 (Farm old)" in conflict["message"]
    assert owned_by(d.status, "n1")[2] is False
    # The earlier farm is not affected by the later one.
    later = [FarmRef("new", "2026-02-01T00:00:00Z", ("203.0.113.10",))]
    assert decide(farm("old"), 1, "2026-01-01T00:00:00Z", NODES, later, {}, reports("n1"), NOW).status["phase"] != "Conflict"


def test_node_selector_limits_the_members():
    nodes = [NodeInfo("n1", {"role": "lb"}), NodeInfo("n2", {"role": "db"})]
    d = decide(farm(selector={"role": "lb"}), 1, "t1", nodes, [], {}, reports("n1", "n2"), NOW)
    assert [m["node"] for m in d.status["members"]] == ["n1"]


def test_agents_read_their_buckets_from_the_status():
    d = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    owned, epoch, ok = owned_by(d.status, "n2")
    assert ok and epoch == 1 and len(owned) == 512
    a, e = previous_assignment(d.status)
    assert isinstance(a, Assignment) and e == 1
    assert previous_assignment({"assignment": {"data": "z1:garbage!", "members": []}})[0] is None


def test_the_decision_view_ignores_applied_epochs_so_a_rebalance_does_not_feed_back():
    before = {"web": {"ready": True, "appliedEpoch": 3, "dataplaneMode": "native"}, "mc": {"ready": True}}
    after = {"web": {"ready": True, "appliedEpoch": 4, "dataplaneMode": "native"}, "mc": {"ready": True}}
    assert farms_changed(decision_view(before), decision_view(after)) == set()
    failing = dict(after, mc={"ready": False, "reason": "DataplaneError", "lastError": "attach failed"})
    assert farms_changed(decision_view(after), decision_view(failing)) == {"mc"}


def test_a_farm_appearing_or_vanishing_from_a_farmnode_is_a_change():
    old = decision_view({"web": {"ready": True}})
    assert farms_changed(old, decision_view({"web": {"ready": True}, "new": {"ready": False}})) == {"new"}
    assert farms_changed(old, decision_view({})) == {"web"}
    assert farms_changed(old, decision_view({"web": None})) == {"web"}


def test_member_entries_leave_out_fields_at_their_usual_value():
    nodes = [NodeInfo("n1"), NodeInfo("n2", weight=2), NodeInfo("n3", ready=False)]
    r = dict(reports("n1", "n2", "n3"))
    r["n1"] = {"ready": True, "dataplaneMode": "native"}
    members = {m["node"]: m for m in decide(farm(), 1, "t1", nodes, [], {}, r, NOW).status["members"]}
    assert members["n1"] == {"node": "n1", "ready": True, "buckets": 341, "dataplaneMode": "native"}
    assert members["n2"] == {"node": "n2", "ready": True, "buckets": 683, "weight": 2}
    assert members["n3"] == {"node": "n3", "ready": False, "buckets": 0, "reason": "NodeNotReady"}
