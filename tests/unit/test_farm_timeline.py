"""The failover/rejoin/drain timeline: a pure fold over programmed decisions."""
from __future__ import annotations

from vipfarm.farm_timeline import (DURATION_BOUNDS, EVENTS_KEPT, Programmed, Timeline, cumulative_buckets,
                                   record)

MS = 1_000_000
W3 = {"n1": 1, "n2": 1, "n3": 1}
ALL = frozenset(W3)


def prog(at_ms, view=ALL, weights=W3, draining=frozenset(), heard=None):
    return Programmed(at_ms * MS, f"t{at_ms}", weights, frozenset(view), frozenset(draining), heard or {})


def test_the_first_programming_is_the_baseline_not_an_event():
    t = record(Timeline(), prog(0))
    assert t.events == () and t.failovers == 0 and t.last_failover is None


def test_a_lost_member_is_a_failover_timed_from_its_last_accepted_heartbeat():
    t = record(Timeline(), prog(0))
    t = record(t, prog(1000, {"n1", "n2"}, heard={"n2": 990 * MS, "n3": 600 * MS}))
    assert t.failovers == 1
    assert t.last_failover.nodes == ("n3",) and t.last_failover.duration_ms == 400
    assert [(e.kind, e.nodes, e.duration_ms) for e in t.events] == [("Failover", ("n3",), 400)]
    assert t.durations_observed == 1 and abs(t.duration_sum_s - 0.4) < 1e-9
    # 0.4 s falls in the 0.4 bucket and every bucket above it
    buckets = dict(cumulative_buckets(t))
    assert buckets["0.3"] == 0 and buckets["0.4"] == 1 and buckets["+Inf"] == 1


def test_several_lost_at_once_count_from_the_earliest_heartbeat_and_once():
    t = record(Timeline(), prog(0, weights={f"n{i}": 1 for i in range(1, 6)}, view={f"n{i}" for i in range(1, 6)}))
    t = record(t, prog(2000, {"n1", "n2", "n3"}, weights={f"n{i}": 1 for i in range(1, 6)},
                       heard={"n4": 1500 * MS, "n5": 1700 * MS}))
    assert t.failovers == 1 and t.last_failover.nodes == ("n4", "n5") and t.last_failover.duration_ms == 500


def test_a_member_never_heard_fails_over_without_a_duration():
    t = record(record(Timeline(), prog(0)), prog(100, {"n1", "n2"}))
    assert t.failovers == 1 and t.last_failover.duration_ms is None and t.durations_observed == 0
    assert cumulative_buckets(t)[-1] == ("+Inf", 0)


def test_rejoin_drain_undrain_join_leave_and_weight_changes():
    t = record(Timeline(), prog(0))
    t = record(t, prog(10, {"n1", "n2"}, heard={"n3": 5 * MS}))
    t = record(t, prog(20))
    t = record(t, prog(30, draining={"n2"}))
    t = record(t, prog(40))
    t = record(t, prog(50, weights={"n1": 1, "n2": 2, "n3": 1, "n4": 1}))
    t = record(t, prog(60, {"n1", "n2"}, weights={"n1": 1, "n2": 2}))
    kinds = [(e.at, e.kind, e.nodes) for e in t.events]
    assert kinds == [("t10", "Failover", ("n3",)), ("t20", "Rejoin", ("n3",)), ("t30", "Drain", ("n2",)),
                     ("t40", "Undrain", ("n2",)), ("t50", "Join", ("n4",)), ("t50", "WeightChange", ("n2",)),
                     ("t60", "Leave", ("n3", "n4"))]
    assert t.failovers == 1     # n3 leaving the configuration is no failover


def test_the_timeline_keeps_the_last_events_oldest_first():
    t = record(Timeline(), prog(0))
    for i in range(1, 2 * EVENTS_KEPT):
        t = record(t, prog(i * 10, {"n1", "n2"} if i % 2 else ALL, heard={"n3": (i * 10 - 1) * MS}))
    assert len(t.events) == EVENTS_KEPT
    assert [e.at for e in t.events] == sorted((e.at for e in t.events), key=lambda s: int(s[1:]))
    assert t.events[-1].at == f"t{(2 * EVENTS_KEPT - 1) * 10}"
    assert t.failovers == EVENTS_KEPT       # every odd step lost n3: counted, though older events were dropped


def test_duration_bounds_are_ascending():
    assert list(DURATION_BOUNDS) == sorted(DURATION_BOUNDS)
