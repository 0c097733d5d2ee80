"""The agent's FarmNode writes (nodeagent/report.py): what it patches, and when."""
from __future__ import annotations

from nodeagent.report import (LAZY_MAX, QUIET, URGENT_GAP, farmnode_object, farms_patch, is_urgent,
                              seconds_until_write, status_patch)

READY = {"ready": True, "reason": "", "appliedEpoch": 3, "dataplaneMode": "generic"}


def delay(now, **kw):
    args = dict(pending=False, urgent=False, last_write=0.0, last_event=0.0, pending_since=0.0, refresh_s=60.0)
    args.update(kw)
    return seconds_until_write(now, **args)


def test_the_patch_holds_only_changed_entries_and_nulls_for_farms_gone():
    written = {"web": READY, "old": READY, "mc": READY}
    wanted = {"web": READY, "mc": dict(READY, appliedEpoch=4), "new": {"ready": False, "reason": "Conflict"}}
    assert farms_patch(written, wanted) == {"mc": dict(READY, appliedEpoch=4), "old": None,
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
