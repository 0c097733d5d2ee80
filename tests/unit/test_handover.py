"""Unit tier: which buckets are in transition on a node (vipfarm/handover.py)."""
from __future__ import annotations

from hypothesis import given, strategies as st

from vipfarm.handover import Drain, Pending, bucket_runs, drain_begin, drain_step, moving_buckets, pending_step

S = 1_000_000_000
TIMEOUT = 300 * S


def test_a_released_bucket_with_flows_drains_from_its_first_census_until_its_flows_are_gone():
    d = drain_step(Drain(), frozenset({1}), {1: 4, 2: 3, 3: 0}, now_ns=10 * S, timeout_ns=TIMEOUT)
    assert d.buckets == {2} and d.flows == {2: 3} and d.since == {2: 10 * S} and d.cut == {}
    d = drain_step(d, frozenset({1}), {1: 9, 2: 1}, now_ns=20 * S, timeout_ns=TIMEOUT)
    assert d.since == {2: 10 * S}, "the drain clock runs from the first census, not the latest"
    assert d.flows_left == 1
    d = drain_step(d, frozenset({1}), {1: 9}, now_ns=30 * S, timeout_ns=TIMEOUT)
    assert d.buckets == frozenset() and d.cut == {}


def test_the_timeout_cuts_the_flows_left_once_and_the_bucket_does_not_drain_again():
    d = drain_step(Drain(), frozenset(), {5: 2}, now_ns=0, timeout_ns=TIMEOUT)
    d = drain_step(d, frozenset(), {5: 2}, now_ns=TIMEOUT, timeout_ns=TIMEOUT)
    assert d.cut == {5: 2} and d.buckets == frozenset() and d.expired == {5}
    d = drain_step(d, frozenset(), {5: 2}, now_ns=TIMEOUT + S, timeout_ns=TIMEOUT)
    assert d.cut == {} and d.buckets == frozenset(), "the cut flows' sockets must not start a second drain"
    d = drain_step(d, frozenset(), {}, now_ns=TIMEOUT + 2 * S, timeout_ns=TIMEOUT)
    assert d.expired == frozenset()
    d = drain_step(d, frozenset(), {5: 1}, now_ns=TIMEOUT + 3 * S, timeout_ns=TIMEOUT)
    assert d.buckets == {5}, "once its sockets were gone, a later move of the bucket drains again"


def test_a_drain_timeout_of_zero_is_a_plain_rehash():
    d = drain_step(Drain(), frozenset(), {1: 3, 2: 1}, now_ns=5 * S, timeout_ns=0)
    assert d.buckets == frozenset() and d.cut == {1: 3, 2: 1}


def test_a_bucket_owned_again_stops_draining():
    d = drain_step(Drain(), frozenset(), {7: 1}, now_ns=0, timeout_ns=TIMEOUT)
    d = drain_step(d, frozenset({7}), {7: 1}, now_ns=S, timeout_ns=TIMEOUT)
    assert d.buckets == frozenset()


def test_an_acquired_bucket_is_pending_for_the_guard_and_then_while_a_member_hands_over():
    guard = 200 * 1_000_000
    p = pending_step(Pending(), frozenset({1}), frozenset({1, 2, 3}), now_ns=0, guard_ns=guard,
                     peers_handing_over=False)
    assert p.buckets == {2, 3}
    p = pending_step(p, frozenset({1, 2, 3}), frozenset({1, 2, 3}), now_ns=guard - 1, guard_ns=guard,
                     peers_handing_over=False)
    assert p.buckets == {2, 3}, "within the guard the old owner's flag may not have arrived yet"
    p = pending_step(p, frozenset({1, 2, 3}), frozenset({1, 2, 3}), now_ns=guard + 10 * S, guard_ns=guard,
                     peers_handing_over=True)
    assert p.buckets == {2, 3}
    p = pending_step(p, frozenset({1, 2, 3}), frozenset({1, 3}), now_ns=guard + 11 * S, guard_ns=guard,
                     peers_handing_over=True)
    assert p.buckets == {3}, "a bucket given away is no longer this node's to keep pending"
    p = pending_step(p, frozenset({1, 3}), frozenset({1, 3}), now_ns=guard + 12 * S, guard_ns=guard,
                     peers_handing_over=False)
    assert p.buckets == frozenset()


def test_moving_is_the_union_of_draining_and_pending():
    d = drain_step(Drain(), frozenset({1}), {4: 1}, now_ns=0, timeout_ns=TIMEOUT)
    p = pending_step(Pending(), frozenset(), frozenset({1}), now_ns=0, guard_ns=S, peers_handing_over=False)
    assert moving_buckets(d, p) == {1, 4}


@given(st.dictionaries(st.integers(0, 63), st.integers(0, 5)), st.frozensets(st.integers(0, 63)),
       st.integers(0, 10 * S))
def test_a_drain_never_holds_an_owned_or_empty_bucket(census, owned, now):
    d = drain_step(Drain(), owned, census, now, TIMEOUT)
    assert not d.buckets & owned
    assert all(census[b] > 0 for b in d.buckets)
    assert d.buckets | d.expired <= {b for b, n in census.items() if n > 0} - owned


@given(st.frozensets(st.integers(0, 300)))
def test_bucket_runs_cover_exactly_the_buckets(buckets):
    runs = bucket_runs(buckets)
    assert frozenset(b for first, n in runs for b in range(first, first + n)) == buckets
    assert all(a[0] + a[1] < b[0] for a, b in zip(runs, runs[1:])), "runs are maximal and ascending"


def test_released_buckets_drain_from_the_flip_that_gives_them_away_until_a_census_says_otherwise():
    d = drain_begin(Drain(), frozenset({1, 2}), now_ns=S, timeout_ns=TIMEOUT)
    assert d.buckets == {1, 2}, "before any census the old owner's flows must already be on the slow path"
    d = drain_step(d, frozenset(), {1: 0, 2: 5}, now_ns=2 * S, timeout_ns=TIMEOUT)
    assert d.buckets == {2} and d.since == {2: S}, "the drain clock starts at the release"
    assert drain_begin(Drain(), frozenset({1}), now_ns=S, timeout_ns=0).buckets == frozenset(), \
        "handover off: nothing is kept"


def test_a_cut_is_reported_by_the_census_that_made_it_only():
    d = drain_step(Drain(), frozenset(), {3: 2}, now_ns=0, timeout_ns=0)
    assert d.cut == {3: 2}
    for timeout in (0, TIMEOUT):
        assert drain_begin(d, frozenset(), now_ns=S, timeout_ns=timeout).cut == {}
