"""The operator's pure decisions (vipfarm.decisions and the core modules it composes),
without Kopf or an API server."""
from __future__ import annotations

import ipaddress

import pytest

from vipfarm.assignment import Assignment
from vipfarm.conflicts import FarmRef, claimed_elsewhere, farm_ref, first_duplicate, share_a_vip
from vipfarm.decisions import decide
from vipfarm.farm_status import CorruptAssignment, served_buckets, stored_assignment
from vipfarm.membership import NodeInfo, node_info
from vipfarm.reports import decision_view, farms_changed
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
    others = [FarmRef("old", "2026-01-01T00:00:00Z", frozenset({ipaddress.ip_address("203.0.113.10")}))]
    d = decide(farm("new"), 1, "2026-02-01T00:00:00Z", NODES, others, {}, reports("n1", "n2", "n3"), NOW)
    assert d.status["phase"] == "Conflict"
    assert set(d.assignment.counts().values()) == {0}
    conflict = next(c for c in d.status["conditions"] if c["type"] == "Conflict")
    assert conflict["status"] == "True" and "203.0.113.10 (Farm old)" in conflict["message"]
    assert served_buckets(d.status, "n1").servable is False
    # The earlier farm is not affected by the later one.
    later = [FarmRef("new", "2026-02-01T00:00:00Z", frozenset({ipaddress.ip_address("203.0.113.10")}))]
    assert decide(farm("old"), 1, "2026-01-01T00:00:00Z", NODES, later, {}, reports("n1"), NOW).status["phase"] != "Conflict"


def test_node_selector_limits_the_members():
    nodes = [NodeInfo("n1", {"role": "lb"}), NodeInfo("n2", {"role": "db"})]
    d = decide(farm(selector={"role": "lb"}), 1, "t1", nodes, [], {}, reports("n1", "n2"), NOW)
    assert [m["node"] for m in d.status["members"]] == ["n1"]


def test_agents_read_their_buckets_from_the_status():
    d = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    served = served_buckets(d.status, "n2")
    assert served.servable and served.epoch == 1 and len(served.buckets) == 512
    assert isinstance(stored_assignment(d.status), Assignment)


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


# -- the VIP conflict rule (vipfarm.conflicts) ----------------------------------------------
def body(name, created, vips, deleting=False):
    md = {"name": name, "creationTimestamp": created}
    if deleting:
        md["deletionTimestamp"] = "2026-03-01T00:00:00Z"
    return {"metadata": md, "spec": {"virtualIPs": list(vips)}}


def test_vips_that_differ_only_in_spelling_are_one_address_in_the_conflict_rule():
    early = farm_ref(body("v6a", "2026-01-01T00:00:00Z", ["2001:db8::10"]))
    late = farm_ref(body("v6b", "2026-02-01T00:00:00Z", ["2001:DB8:0::0:10"]))
    assert claimed_elsewhere(late, [early, late]) == ["2001:db8::10 (Farm v6a)"]
    assert claimed_elsewhere(early, [early, late]) == []
    assert share_a_vip(early, late)


def test_the_later_farm_in_a_case_only_ipv6_clash_gets_conflict_and_the_earlier_keeps_serving():
    v6 = parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "v6b"},
                     "spec": {"virtualIPs": ["2001:DB8::10"]}})
    others = [farm_ref(body("v6a", "2026-01-01T00:00:00Z", ["2001:db8::10"]))]
    d = decide(v6, 1, "2026-02-01T00:00:00Z", NODES, others, {}, reports("n1", "n2", "n3"), NOW)
    assert d.status["phase"] == "Conflict"
    assert "2001:db8::10 (Farm v6a)" in next(c for c in d.status["conditions"] if c["type"] == "Conflict")["message"]


def test_a_farm_being_deleted_claims_nothing_and_ties_go_to_the_name():
    gone = farm_ref(body("a", "2026-01-01T00:00:00Z", ["203.0.113.10"], deleting=True))
    me = farm_ref(body("b", "2026-02-01T00:00:00Z", ["203.0.113.10"]))
    assert claimed_elsewhere(me, [gone]) == []
    same_time = [farm_ref(body(n, "2026-01-01T00:00:00Z", ["203.0.113.10"])) for n in ("x", "y")]
    assert claimed_elsewhere(same_time[1], same_time) == ["203.0.113.10 (Farm x)"]
    assert claimed_elsewhere(same_time[0], same_time) == []


def test_first_duplicate_finds_one_vip_in_two_farms_whatever_its_spelling():
    a, b = ipaddress.ip_address("2001:db8::10"), ipaddress.ip_address("2001:DB8::10")
    assert first_duplicate([("x", [a]), ("y", [b])]) == (a, "x", "y")
    assert first_duplicate([("x", [a]), ("y", [ipaddress.ip_address("2001:db8::11")])]) is None


# -- a corrupt stored assignment (vipfarm.farm_status) -------------------------------------------
CORRUPT = [
    {"encoding": "z1", "members": ["n1", "n2", "n3"], "data": "z1:garbage!", "epoch": 7},
    {"encoding": "z1", "members": ["n1"], "data": "z9:AAAA", "epoch": 7},
    {"encoding": "z1", "members": "n1", "data": "z1:eJwDAAAAAAE=", "epoch": 7},
    "not a mapping",
    {"encoding": "z1", "members": ["n1", "n2", "n3"], "data": "", "epoch": 7},
    {"encoding": "z1", "members": ["n1", "n2", "n3"], "epoch": 7},
]


@pytest.mark.parametrize("stored", CORRUPT, ids=["bad-base64", "unknown-encoding", "members-not-list", "not-mapping",
                                                 "empty-data", "no-data"])
def test_a_corrupt_stored_assignment_is_an_error_never_an_empty_assignment(stored):
    with pytest.raises(CorruptAssignment):
        stored_assignment({"assignment": stored})
    with pytest.raises(CorruptAssignment):
        served_buckets({"assignment": stored, "phase": "Ready"}, "n1")


def test_a_corrupt_stored_assignment_moves_nothing_and_says_how_to_repair_it():
    first = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    broken = dict(first.status, assignment=dict(first.status["assignment"], data="z1:garbage!"))
    d = decide(farm(), 1, "t1", NODES, [], broken, reports("n1", "n2", "n3"), NOW)
    assert d.assignment is None
    assert d.status["assignment"] == broken["assignment"]          # left as found, for inspection
    assert d.status["epoch"] == first.status["epoch"] and d.status["members"] == first.status["members"]
    degraded = next(c for c in d.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "AssignmentUnreadable"
    assert "kubectl patch farm web --subresource=status" in degraded["message"]
    assert [(e.reason, e.type) for e in d.events] == [("AssignmentUnreadable", "Warning")]
    # Said once: deciding again on the same broken status emits nothing new.
    assert decide(farm(), 1, "t1", NODES, [], d.status, reports("n1", "n2", "n3"), NOW).events == []


def test_a_cleared_assignment_is_dealt_afresh_with_a_newer_epoch():
    first = decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)
    cleared = dict(first.status, assignment=None)
    d = decide(farm(), 1, "t1", NODES, [], cleared, reports("n1", "n2", "n3"), NOW)
    assert d.assignment.counts() == {"n1": 256, "n2": 512, "n3": 256}
    assert d.status["epoch"] == first.status["epoch"] + 1
