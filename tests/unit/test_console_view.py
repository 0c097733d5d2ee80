"""What the web console shows, decided in vipfarm/console_view.py: colours, shares, rates, rows."""
from __future__ import annotations

from vipfarm.console_view import (PALETTE, UNOWNED_COLOUR, CounterSample, colour_for_index, console_document,
                                  console_farm, counter_sample, owner_colours, packet_rates)


def view(owners, members=("n1", "n2", "n3"), locals_=None, events=()):
    locals_ = locals_ or {}
    return {"name": "web", "vips": ["203.0.113.10"], "buckets": len(owners), "view": list(members),
            "agreed": True, "baseEpoch": 3, "reportedBy": "n1", "owners": list(owners),
            "members": [{"name": n, "address": f"198.51.100.{i}", "weight": 1, "state": "Serving", "reason": "",
                         "lastHeardMs": 5, "local": locals_.get(n)} for i, n in enumerate(members, 1)],
            "lastFailover": None, "events": list(events)}


def test_each_member_keeps_its_colour_whoever_holds_the_buckets():
    before = console_farm(view(["n1", "n2", "n3", "n1"]), {})
    after = console_farm(view(["n1", "n2", "n1", "n1"]), {})          # n3 lost its buckets
    assert before["colours"] == after["colours"]
    assert [before["colours"][n] for n in ("n1", "n2", "n3")] == list(PALETTE[:3])
    assert before["colours"][""] == UNOWNED_COLOUR


def test_colours_are_distinct_for_a_full_farm_of_64():
    colours = owner_colours([f"n{i}" for i in range(64)])
    assert len(set(colours.values())) == 64 and UNOWNED_COLOUR not in colours.values()
    assert colour_for_index(8).startswith("hsl(")


def test_an_owner_missing_from_the_members_is_coloured_after_them():
    colours = owner_colours(["n2", "n1"], ["n1", "zz", None, "aa"])
    assert list(colours) == ["n2", "n1", "aa", "zz"]


def test_the_legend_gives_every_member_its_share_and_the_unowned_buckets_last():
    farm = console_farm(view(["n1", "n1", "n2", None]), {})
    assert [(e["owner"], e["buckets"], e["percent"]) for e in farm["legend"]] == \
        [("n1", 2, 50.0), ("n2", 1, 25.0), ("n3", 0, 0.0), (None, 1, 25.0)]
    assert [m["buckets"] for m in farm["members"]] == [2, 1, 0]


def test_rates_are_accepted_packets_per_second_between_two_samples():
    before = CounterSample(10.0, {("web", "n1"): 100, ("web", "n2"): 50, ("web", "n3"): 900})
    now = CounterSample(10.5, {("web", "n1"): 300, ("web", "n2"): 50, ("web", "n3"): 10, ("web", "n4"): 7})
    assert packet_rates(before, now) == {("web", "n1"): 400.0, ("web", "n2"): 0.0,
                                         ("web", "n3"): None,        # counters re-created: no rate
                                         ("web", "n4"): None}        # first seen
    assert packet_rates(None, now) == dict.fromkeys(now.accepted, None)
    assert packet_rates(now, now) == dict.fromkeys(now.accepted, None)


def test_a_sample_holds_the_counters_of_the_members_whose_agent_answered():
    v = view(["n1"], locals_={"n1": {"counters": {"accepted": 41}}, "n2": {"counters": {}}})
    assert counter_sample([v], 3.0) == CounterSample(3.0, {("web", "n1"): 41})


def test_rows_carry_health_checks_recovery_runs_and_the_rate():
    local = {"ready": True, "ownedBuckets": 2, "counters": {"accepted": 9},
             "checks": [{"name": "http", "state": "Failing", "lastRun": "t", "recoveryRuns": 2},
                        {"name": "tcp", "state": "Passing", "lastRun": "t", "recoveryRuns": 1}]}
    farm = console_farm(view(["n1", "n1"], locals_={"n1": local}), {("web", "n1"): 12.5})
    n1, n2 = farm["members"][:2]
    assert (n1["answered"], n1["ready"], n1["ownedBuckets"], n1["recoveryRuns"], n1["packetsPerSecond"]) == \
        (True, True, 2, 3, 12.5)
    assert [c["state"] for c in n1["checks"]] == ["Failing", "Passing"]
    assert (n2["answered"], n2["checks"], n2["packetsPerSecond"]) == (False, [], None)


def test_the_timeline_is_newest_first_and_the_document_says_mode_and_actions():
    a = {"at": "2026-12-02T10:00:00Z", "kind": "Failover", "nodes": ["n3"], "durationMs": 300}
    b = {"at": "2026-12-02T10:01:00Z", "kind": "Rejoin", "nodes": ["n3"], "durationMs": None}
    doc = console_document([view(["n1"], events=[a, b])], ["x: down"], {}, mode="standalone", actions=False,
                           generated_at="2026-12-02T10:02:00Z")
    assert [e["kind"] for e in doc["farms"][0]["timeline"]] == ["Rejoin", "Failover"]
    assert (doc["mode"], doc["actions"], doc["errors"]) == ("standalone", False, ["x: down"])
