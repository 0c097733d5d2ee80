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
        assert {m["node"]: m.get("reason") for m in d.status["members"]}["n2"] in ("Cordoned", "Drained")


def test_a_drained_member_says_draining_with_its_flows_left_and_then_drained():
    for n2, done in ((NodeInfo("n2", unschedulable=True), "Cordoned"), (NodeInfo("n2", draining=True), "Drained")):
        draining = reports("n1", "n2")
        draining["n2"] = {**draining["n2"], "flowsLeft": 37}
        d = decide(farm(), 1, "t1", [NodeInfo("n1"), n2], [], {}, draining, NOW)
        member = {m["node"]: m for m in d.status["members"]}["n2"]
        assert (member["reason"], member["flowsLeft"], member["buckets"]) == ("Draining", 37, 0)
        d = decide(farm(), 1, "t1", [NodeInfo("n1"), n2], [], d.status, reports("n1", "n2"), NOW)
        member = {m["node"]: m for m in d.status["members"]}["n2"]
        assert member["reason"] == done and "flowsLeft" not in member


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


# -- failover: eligibility, the agents' agreed view, staleness -----------------------------
from hypothesis import given, settings          # noqa: E402
from hypothesis import strategies as st         # noqa: E402

from vipfarm.agreement import effective_assignment   # noqa: E402
from vipfarm.decisions import liveness               # noqa: E402
from vipfarm.reports import agent_report             # noqa: E402


def agreed(view, digest="d1", ok=True, withdrawn=()):
    m = {"baseEpoch": 1, "view": sorted(view), "digest": digest, "agreed": ok}
    if withdrawn:
        m["withdrawn"] = sorted(withdrawn)
    return m


def with_views(views: dict, reported_at=None):
    """Reports from agents that run heartbeats: node -> its membership view (None: no membership)."""
    out = {}
    for n, m in views.items():
        r = {"ready": True}
        if m is not None:
            r["membership"] = m
        if reported_at is not None:
            r["reportedAt"] = reported_at
        out[n] = r
    return out


def members_of(d):
    return {m["node"]: m for m in d.status["members"]}


def first_three():
    return decide(farm(), 1, "t1", NODES, [], {}, reports("n1", "n2", "n3"), NOW)


def test_a_crashed_node_whose_peers_agree_without_it_loses_its_buckets_while_its_node_is_still_ready():
    first = first_three()
    views = {"n1": agreed({"n1", "n2"}), "n2": agreed({"n1", "n2"}), "n3": agreed({"n1", "n2", "n3"}, "d0")}
    d = decide(farm(), 1, "t1", NODES, [], first.status, with_views(views), NOW)
    assert d.assignment.counts() == {"n1": 341, "n2": 683, "n3": 0}
    m = members_of(d)["n3"]
    assert (m["ready"], m["eligible"], m["reason"]) == (False, True, "HeartbeatLost")
    assert "left: n3" in d.events[0].message
    before, after = first.assignment.owner_names(), d.assignment.owner_names()
    assert all(before[b] == "n3" for b in range(1024) if before[b] != after[b])


def test_one_agent_alone_cannot_take_a_member_out():
    first = first_three()
    views = {"n1": agreed({"n1", "n2"}), "n2": agreed({"n1", "n2", "n3"}, "d0"), "n3": agreed({"n1", "n2", "n3"}, "d0")}
    d = decide(farm(), 1, "t1", NODES, [], first.status, with_views(views), NOW)
    assert d.assignment.owner_names() == first.assignment.owner_names()
    assert d.status["epoch"] == first.status["epoch"]


def test_without_a_majority_view_the_previous_serving_set_stays_so_nothing_flaps():
    first = first_three()
    split = {"n1": agreed({"n1", "n2"}, "a"), "n2": agreed({"n2", "n3"}, "b"), "n3": agreed({"n1", "n3"}, "c")}
    d = decide(farm(), 1, "t1", NODES, [], first.status, with_views(split), NOW)
    assert d.assignment.owner_names() == first.assignment.owner_names() and d.events == []
    # unagreed views count for nothing either, however many say it
    pending = {n: agreed({"n1", "n2"}, ok=False) for n in ("n1", "n2", "n3")}
    d = decide(farm(), 1, "t1", NODES, [], first.status, with_views(pending), NOW)
    assert d.assignment.owner_names() == first.assignment.owner_names()


def test_a_member_outside_the_serving_set_rejoins_only_when_a_majority_agrees_on_a_view_with_it():
    first = first_three()
    out = decide(farm(), 1, "t1", NODES, [], first.status,
                 with_views({n: agreed({"n1", "n2"}) for n in ("n1", "n2", "n3")}), NOW)
    assert out.assignment.counts()["n3"] == 0
    waiting = decide(farm(), 1, "t1", NODES, [], out.status,
                     with_views({"n1": agreed({"n1", "n2"}), "n2": agreed({"n1", "n2"}, ok=False),
                                 "n3": agreed({"n1", "n2", "n3"}, "d3", ok=False)}), NOW)
    assert waiting.assignment.counts()["n3"] == 0
    assert members_of(waiting)["n3"]["reason"] == "AwaitingAgreement"
    back = decide(farm(), 1, "t1", NODES, [], out.status,
                  with_views({n: agreed({"n1", "n2", "n3"}, "d3") for n in ("n1", "n2", "n3")}), NOW)
    assert back.assignment.counts() == {"n1": 256, "n2": 512, "n3": 256}


def test_a_withdrawn_member_in_the_agreed_view_serves_nothing():
    first = first_three()
    views = {n: agreed({"n1", "n2", "n3"}, "w", withdrawn={"n2"}) for n in ("n1", "n2", "n3")}
    d = decide(farm(), 1, "t1", NODES, [], first.status, with_views(views), NOW)
    assert d.assignment.counts()["n2"] == 0 and members_of(d)["n2"]["reason"] == "Withdrawn"


def test_an_agent_that_stopped_reporting_is_stale_and_no_longer_eligible():
    first = first_three()
    r = with_views({n: agreed({"n1", "n2", "n3"}) for n in ("n1", "n2", "n3")}, "2026-11-24T23:59:00Z")
    r["n3"]["reportedAt"] = "2026-11-24T23:56:59Z"          # 181 s before NOW
    d = decide(farm(), 1, "t1", NODES, [], first.status, r, NOW, stale_after=180)
    m = members_of(d)["n3"]
    assert (m["ready"], m.get("eligible"), m["reason"]) == (False, None, "AgentStale")
    assert d.assignment.counts()["n3"] == 0
    # 2 of the 2 eligible members agree on a view with n3 in it: n3 is still out (not eligible)
    assert d.assignment.counts() == {"n1": 341, "n2": 683, "n3": 0}


def test_report_ages_count_from_when_the_api_server_came_back():
    first = first_three()
    r = with_views({n: agreed({"n1", "n2", "n3"}) for n in ("n1", "n2", "n3")}, "2026-11-24T23:50:00Z")
    d = decide(farm(), 1, "t1", NODES, [], first.status, r, NOW, stale_after=180,
               stale_counted_from="2026-11-24T23:59:00Z")
    assert all(m["ready"] for m in d.status["members"])
    assert d.recheck_in == pytest.approx(121.0)      # 180 - 60 s since the API came back, + 1


def test_the_soonest_report_to_turn_stale_sets_when_to_decide_again():
    r = with_views({"n1": None, "n2": None, "n3": None}, "2026-11-24T23:58:00Z")
    r["n2"]["reportedAt"] = "2026-11-24T23:59:30Z"
    d = decide(farm(), 1, "t1", NODES, [], {}, r, NOW, stale_after=180)
    assert d.recheck_in == pytest.approx(61.0)


def test_the_first_decision_serves_every_eligible_member_whatever_the_views_say():
    views = {"n1": agreed({"n1"}, "a"), "n2": agreed({"n2"}, "b"), "n3": None}
    d = decide(farm(), 1, "t1", NODES, [], {}, with_views(views), NOW)
    assert d.assignment.counts() == {"n1": 256, "n2": 512, "n3": 256}


def test_a_farm_decided_before_any_agent_reported_serves_the_members_once_they_report():
    """The Farm is reconciled as soon as it is created, before any agent reported: that stores an
    assignment with no owner. Then the agents report, each alone in its own view (they run
    heartbeats only with the eligible members, and there were none): nobody served, so nothing
    can flap, and every eligible member gets its share."""
    empty = decide(farm(), 1, "t1", NODES, [], {}, {}, NOW)
    assert set(empty.assignment.counts().values()) == {0} and empty.status["phase"] == "Pending"
    alone = {n: agreed({n}, f"d-{n}", withdrawn={n}) for n in ("n1", "n2", "n3")}
    d = decide(farm(), 1, "t1", NODES, [], empty.status, with_views(alone), NOW)
    assert d.assignment.counts() == {"n1": 256, "n2": 512, "n3": 256} and d.status["phase"] == "Ready"


def test_members_publish_the_heartbeat_address_their_agent_reported():
    r = reports("n1", "n2", "n3")
    r["n1"] = {"ready": True, "address": "198.51.100.1"}
    assert members_of(decide(farm(), 1, "t1", NODES, [], {}, r, NOW))["n1"]["address"] == "198.51.100.1"


@st.composite
def failover_worlds(draw):
    names = [f"n{i}" for i in range(draw(st.integers(1, 6)))]
    weights = {n: draw(st.integers(0, 4)) for n in names}
    nodes = [NodeInfo(n, weight=weights[n], ready=draw(st.booleans()) or i == 0) for i, n in enumerate(names)]
    earlier = draw(st.sets(st.sampled_from(names), min_size=1))
    view = draw(st.sets(st.sampled_from(names)))
    withdrawn = draw(st.sets(st.sampled_from(sorted(view)))) if view else set()
    buckets = draw(st.sampled_from([64, 128, 256]))
    return nodes, weights, earlier, view, withdrawn, buckets


@settings(max_examples=300, deadline=None)
@given(world=failover_worlds())
def test_the_operator_writes_the_assignment_the_agents_compute_from_the_agreed_view(world):
    """Whatever the previous assignment, the weights and the view: once a majority of the
    eligible agents agree on V, the operator's new assignment has, bucket for bucket, the
    owners every agent computes with effective_assignment(previous, eligible weights, V), so
    the operator's write after a failover moves nothing a second time."""
    nodes, weights, earlier, view, withdrawn, buckets = world
    f = farm(buckets=buckets)
    prev = decide(f, 1, "t1", nodes, [], {}, reports(*earlier), NOW)
    eligible = {n.name for n in nodes if n.ready}
    views = {n: agreed(view, "v", withdrawn=withdrawn) for n in eligible}
    d = decide(f, 1, "t1", nodes, [], prev.status, with_views(views), NOW)
    base = stored_assignment(prev.status)
    agent_weights = {n: (0 if n in withdrawn else weights[n]) for n in eligible}
    assert d.assignment.owner_names() == effective_assignment(base, agent_weights, view).owner_names()


def test_liveness_needs_a_strict_majority_of_the_eligible_members():
    rep = {n: agent_report({"ready": True, "membership": agreed({"a", "b"})}) for n in ("a", "b")}
    assert liveness({"a", "b", "c", "d"}, rep, {"a", "b", "c", "d"}).basis == "kept"
    assert liveness({"a", "b", "c"}, rep, {"a", "b", "c"}).live == {"a", "b"}
