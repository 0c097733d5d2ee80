"""farm_view_from_resource: a Farm object and the FarmNodes, as the API server returns them,
give the same farm view shape as the agents' merged /status answers."""
from vipfarm.assignment import Member, assign
from vipfarm.farm_status import assignment_status
from vipfarm.reports import membership_report
from vipfarm.status_view import FARM_VIEW_FIELDS, farm_view_from_resource, merge_agent_statuses
from tests.support.status_docs import farm_entry, member, status_document


def farm_object(members, assignment=None, phase="Degraded", epoch=4):
    status = {"phase": phase, "epoch": epoch, "members": members}
    if assignment is not None:
        status["assignment"] = assignment
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
            "spec": {"virtualIPs": ["203.0.113.10", "2001:db8::10"], "buckets": 8}, "status": status}


def farmnode(node, report, reported_at="2026-12-02T10:00:00Z"):
    return {"metadata": {"name": node}, "status": {"reportedAt": reported_at, "farms": {"web": report}}}


def agreed_on(view, epoch=4, agreed=True):
    return membership_report(epoch, view, bytes.fromhex("00112233"), agreed)


A = assign(None, [Member("n1", 1), Member("n2", 3), Member("n3", 1, False)], 8)
MEMBERS = [
    {"node": "n1", "ready": True, "buckets": 2, "address": "198.51.100.1", "dataplaneMode": "generic"},
    {"node": "n2", "ready": True, "buckets": 6, "weight": 3, "address": "198.51.100.2", "flowsLeft": 7},
    {"node": "n3", "ready": False, "buckets": 0, "reason": "HeartbeatLost", "eligible": True},
    {"node": "n4", "ready": False, "buckets": 0, "reason": "Draining", "flowsLeft": 5},
    {"node": "n5", "ready": False, "buckets": 0, "reason": "Cordoned"},
    {"node": "n6", "ready": False, "buckets": 0, "reason": "Withdrawn", "eligible": True},
]


def test_the_operator_members_become_agent_states_and_the_reports_their_local_part():
    checks = {"http": {"name": "http", "type": "http", "state": "passing", "detail": "200", "since": "2026-12-02T09:00:00Z"},
              "recovery": {"name": "recovery", "type": "recovery", "state": "succeeded", "detail": "", "since": "x"}}
    nodes = [farmnode("n1", {"ready": True, "checks": checks, "address": "198.51.100.1",
                             "membership": agreed_on(["n1", "n2", "n6"])}),
             farmnode("n2", {"ready": True, "flowsLeft": 7, "membership": agreed_on(["n1", "n2", "n6"])}),
             farmnode("n6", {"ready": True, "membership": agreed_on(["n1", "n2", "n6"])}),
             {"metadata": {"name": "other"}, "status": {"farms": {"db": {"ready": True}}}}]
    v = farm_view_from_resource(farm_object(MEMBERS, assignment_status(A, 4)), nodes)
    assert tuple(v) == FARM_VIEW_FIELDS
    assert v["name"] == "web" and v["vips"] == ["203.0.113.10", "2001:db8::10"] and v["buckets"] == 8
    assert v["phase"] == "Degraded" and v["baseEpoch"] == 4 and v["reportedBy"] is None
    assert v["owners"] == A.owner_names() and v["owners"].count("n2") == 6
    assert v["lastFailover"] is None and v["events"] == []
    by = {m["name"]: m for m in v["members"]}
    assert [(n, by[n]["state"], by[n]["reason"]) for n in by] == [
        ("n1", "Serving", ""), ("n2", "Serving", ""), ("n3", "Out", "HeartbeatLost"), ("n4", "Draining", "Draining"),
        ("n5", "Drained", "Cordoned"), ("n6", "Withdrawn", "Withdrawn")]
    assert by["n1"]["weight"] == 1 and by["n2"]["weight"] == 3 and by["n2"]["buckets"] == 6
    assert by["n1"]["address"] == "198.51.100.1" and by["n3"]["address"] is None
    assert by["n1"]["dataplaneMode"] == "generic" and by["n1"]["reportedAt"] == "2026-12-02T10:00:00Z"
    assert by["n1"]["local"] == {"ready": True, "handover": {"active": False, "flowsLeft": 0},
                                 "checks": [{"name": "http", "state": "Passing", "lastRun": None,
                                             "since": "2026-12-02T09:00:00Z"}]}
    assert by["n2"]["handingOver"] and by["n2"]["local"]["handover"] == {"active": True, "flowsLeft": 7}
    assert by["n4"]["handingOver"] and by["n4"]["local"] is None        # no FarmNode report for n4
    assert all(m["lastHeardMs"] is None for m in v["members"])
    # 3 of the 4 eligible members (n1, n2, n3, n6) report the same agreed view: a majority.
    assert v["view"] == ["n1", "n2", "n6"] and v["agreed"] is True


def test_a_view_without_a_majority_is_shown_not_agreed_and_no_memberships_mean_the_serving_members():
    nodes = [farmnode("n1", {"ready": True, "membership": agreed_on(["n1", "n2"])}),
             farmnode("n2", {"ready": True, "membership": agreed_on(["n1", "n2", "n3"], agreed=False)})]
    v = farm_view_from_resource(farm_object(MEMBERS, assignment_status(A, 4)), nodes)
    assert v["view"] == ["n1", "n2"] and v["agreed"] is False            # 1 of 4 eligible
    plain = farm_view_from_resource(farm_object(MEMBERS, assignment_status(A, 4)), [])
    assert plain["view"] == ["n1", "n2"] and plain["agreed"] is False
    assert all(m["local"] is None and m["reportedAt"] is None for m in plain["members"])


def test_an_unreadable_or_absent_assignment_gives_no_owners_and_the_phase_says_why():
    bad = farm_view_from_resource(farm_object(MEMBERS, {"encoding": "z1", "members": ["n1"], "data": "z1:!!"}), [])
    assert bad["owners"] == [] and bad["phase"] == "Degraded" and bad["buckets"] == 8
    empty = farm_view_from_resource({"metadata": {"name": "new"}, "spec": {"virtualIPs": ["203.0.113.11"]}}, [])
    assert empty["name"] == "new" and empty["members"] == [] and empty["owners"] == [] and empty["phase"] is None
    assert empty["baseEpoch"] == 0 and empty["view"] == [] and empty["agreed"] is False


def test_both_modes_give_the_same_fields():
    ms = [member("n1", "198.51.100.1"), member("n2", "198.51.100.2")]
    [standalone] = merge_agent_statuses([status_document("n1", [farm_entry("web", node="n1", members=ms)])])
    cluster = farm_view_from_resource(farm_object(MEMBERS[:2], assignment_status(A, 4)), [])
    assert tuple(standalone) == tuple(cluster) == FARM_VIEW_FIELDS
    contract_member = {"name", "address", "weight", "state", "reason", "buckets", "lastHeardMs", "handingOver", "local"}
    assert contract_member <= set(standalone["members"][0]) and contract_member <= set(cluster["members"][0])
