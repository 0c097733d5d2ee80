"""The agent's FarmNode writes (nodeagent/farmnode_report.py): what it reports, what it patches, and when."""
from __future__ import annotations

from nodeagent.farmnode_report import (LAZY_MAX, QUIET, URGENT_GAP, farmnode_object, farms_patch, is_urgent,
                              seconds_until_write, settled, status_patch, wanted)

READY = {"ready": True, "reason": "", "appliedEpoch": 3, "dataplaneMode": "generic"}


def delay(now, **kw):
    args = dict(pending=False, urgent=False, last_write=0.0, last_event=0.0, pending_since=0.0, refresh_s=60.0)
    args.update(kw)
    return seconds_until_write(now, **args)


def test_the_patch_holds_only_changed_entries_and_nulls_for_farms_gone():
    written = {"web": READY, "old": READY, "mc": READY}
    wanted = {"web": READY, "mc": dict(READY, appliedEpoch=4), "new": {"ready": False, "reason": "Conflict"}}
    # a changed entry is patched by its changed keys only
    assert farms_patch(written, wanted) == {"mc": {"appliedEpoch": 4}, "old": None,
                                           "new": {"ready": False, "reason": "Conflict"}}
    assert farms_patch(wanted, wanted) == {}


def test_an_epoch_only_change_is_not_urgent_but_readiness_and_release_are():
    written = {"web": READY}
    assert not is_urgent(written, {"web": dict(READY, appliedEpoch=9)})
    assert is_urgent(written, {"web": dict(READY, ready=False, reason="DataplaneError")})
    assert is_urgent(written, {"web": dict(READY, released=True)})
    assert is_urgent(written, {})
    assert is_urgent({}, {"web": READY})


def test_urgent_changes_go_at_once_but_never_two_writes_within_the_gap():
    assert delay(100.0, pending=True, urgent=True, last_write=10.0) == 0.0
    assert delay(100.0, pending=True, urgent=True, last_write=99.5) == URGENT_GAP - 0.5
    assert delay(100.0, pending=True, urgent=True, last_write=float("-inf")) == 0.0


def test_epoch_only_changes_wait_for_a_quiet_watch_but_not_forever():
    # events still arriving: wait for QUIET seconds after the last one
    assert delay(100.0, pending=True, last_write=50.0, last_event=99.0, pending_since=98.0) == QUIET - 1.0
    # a stream of events that never stops: LAZY_MAX after the change was first seen
    assert delay(100.0, pending=True, last_write=50.0, last_event=100.0,
                 pending_since=100.0 - LAZY_MAX + 1) == 1.0
    assert delay(100.0, pending=True, last_write=50.0, last_event=100.0, pending_since=80.0) == 0.0


def test_with_nothing_to_say_the_agent_refreshes_once_per_period():
    assert delay(100.0, last_write=70.0, refresh_s=60.0) == 30.0
    assert delay(100.0, last_write=30.0, refresh_s=60.0) == 0.0


def test_the_status_patch_carries_counts_and_the_farmnode_is_owned_by_its_node():
    body = status_patch({"old": None}, {"web": READY, "mc": {"ready": False}}, "2026-11-25T00:00:00Z", "0.1.0")
    assert body["status"]["farms"] == {"old": None}
    assert (body["status"]["farmCount"], body["status"]["readyCount"]) == (2, 1)
    obj = farmnode_object("n1", "uid-1", "vipfarm.io/v1alpha1")
    assert obj["metadata"]["name"] == "n1" and obj["kind"] == "FarmNode"
    assert obj["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-1"}]
    assert "ownerReferences" not in farmnode_object("n1", None, "vipfarm.io/v1alpha1")["metadata"]


# -- what the agent reports: wanted() and settled() ----------------------------------------
def _farm_body(name, vip="203.0.113.10", deleting=False, created="2026-12-01T00:00:00Z", status=None):
    md = {"name": name, "creationTimestamp": created}
    if deleting:
        md["deletionTimestamp"] = "2026-12-01T01:00:00Z"
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": md, "status": status or {},
            "spec": {"virtualIPs": [vip], "interface": "eth0", "nodeSelector": {"member": "yes"},
                     "rules": [{"protocol": "TCP", "ports": "80"}]}}


def test_a_deleting_farm_is_released_only_after_a_dataplane_change_without_it_succeeded():
    w = wanted({"old": _farm_body("old", deleting=True), "web": _farm_body("web", vip="203.0.113.11")},
               {"member": "yes"}, "n1")
    assert [i.farm.name for i in w.serve] == ["web"] and w.deleting == {"old"}
    assert w.drafts["old"]["released"] is False            # not before the change ran
    failed = settled(w, "eth0: bpf map update failed: EPERM", {})
    assert failed["old"] == {"ready": False, "reason": "Deleting", "released": False,
                             "lastError": "eth0: bpf map update failed: EPERM"}
    assert failed["web"]["reason"] == "DataplaneError" and failed["web"]["ready"] is False
    done = settled(w, None, {"eth0": "generic"})
    assert done["old"] == {"ready": False, "reason": "Deleting", "released": True}
    assert done["web"] == {"ready": True, "reason": "", "appliedEpoch": 0, "lastError": "", "dataplaneMode": "generic"}


def test_wanted_skips_farms_for_other_nodes_and_never_serves_a_later_claim_on_a_vip():
    farms = {"web": _farm_body("web"),
             "copy": _farm_body("copy", created="2026-12-01T00:00:05Z"),
             "bad": dict(_farm_body("bad"), spec={"virtualIPs": ["203.0.113.300"], "nodeSelector": {}}),
             "elsewhere": dict(_farm_body("elsewhere"), spec={"virtualIPs": ["203.0.113.12"],
                                                                "nodeSelector": {"member": "no"}})}
    w = wanted(farms, {"member": "yes"}, "n1")
    assert [i.farm.name for i in w.serve] == ["web"]
    assert set(w.drafts) == {"web", "copy", "bad"}
    assert w.drafts["copy"]["reason"] == "Conflict" and w.drafts["bad"]["reason"] == "InvalidSpec"
    assert "203.0.113.300" in w.drafts["bad"]["lastError"]


def test_a_farm_whose_stored_assignment_is_corrupt_keeps_exactly_the_buckets_it_serves_now():
    body = _farm_body("web")
    body["status"] = {"phase": "Ready", "epoch": 4,
                      "assignment": {"encoding": "z1", "members": ["n1"], "data": "z1:garbage!", "epoch": 4}}
    kept = frozenset({1, 5, 9})
    w = wanted({"web": body}, {"member": "yes"}, "n1", serving_now={"web": kept})
    assert [(i.farm.name, i.owned) for i in w.serve] == [("web", kept)]
    assert w.drafts["web"]["ready"] is True and "AssignmentUnreadable" in w.drafts["web"]["lastError"]
    # Not serving it yet: it is not served on a guess either, and the report says why.
    w = wanted({"web": body}, {"member": "yes"}, "n1", serving_now={})
    assert w.serve == () and w.drafts["web"]["reason"] == "AssignmentUnreadable"


def test_a_membership_or_heartbeat_address_change_is_urgent():
    m = {"baseEpoch": 1, "view": ["n1", "n2", "n3"], "digest": "aa" * 8, "agreed": True}
    written = {"web": dict(READY, address="198.51.100.1", membership=m)}
    lost = dict(m, view=["n1", "n2"], digest="bb" * 8)
    assert is_urgent(written, {"web": dict(READY, address="198.51.100.1", membership=lost)})
    assert is_urgent(written, {"web": dict(READY, address="198.51.100.9", membership=m)})
    assert not is_urgent(written, {"web": dict(READY, appliedEpoch=4, address="198.51.100.1", membership=m)})


def test_without_a_heartbeat_key_a_multi_member_farm_is_reported_not_ready_with_the_problem():
    from nodeagent.farmnode_report import with_heartbeats
    reports = {"web": dict(READY), "solo": dict(READY)}
    out = with_heartbeats(reports, {"web": "198.51.100.1", "solo": "198.51.100.1"}, {},
                          "Secret ns/s key k does not exist; create it", {"web"})
    assert (out["web"]["ready"], out["web"]["reason"]) == (False, "HeartbeatKeyUnusable")
    assert "does not exist" in out["web"]["lastError"]
    assert out["solo"]["ready"] is True and out["solo"]["address"] == "198.51.100.1"
    assert reports["web"] == READY                 # the input is not changed


def test_a_key_dropped_from_a_nested_report_is_removed_by_the_patch_not_kept():
    """A merge patch keeps what it does not name: membership.withdrawn, once gone from the
    report, must be patched to null, or the operator reads a stale withdrawal for ever."""
    from nodeagent.farmnode_report import farms_patch, merge_patch
    written = {"web": {"ready": True, "membership": {"view": ["n1", "n2"], "agreed": True, "withdrawn": ["n1"]}}}
    wanted = {"web": {"ready": True, "membership": {"view": ["n1", "n2"], "agreed": True}}}
    patch = farms_patch(written, wanted)
    assert patch == {"web": {"membership": {"withdrawn": None}}}
    def apply(doc, p):      # RFC 7386
        if not isinstance(p, dict):
            return p
        out = dict(doc) if isinstance(doc, dict) else {}
        for k, v in p.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = apply(out.get(k), v)
        return out
    assert apply(written, patch) == wanted
    assert merge_patch({"a": 1}, {"a": 1, "b": 2}) == {"b": 2}
