"""vipfarm.assignment: balance, minimal movement, determinism, persistence and the wire form.

The minimum number of moved buckets is computed here independently of assign(): for every
way of handing the R leftover buckets to live members, the cheapest outcome reaching those
targets moves every orphaned bucket plus each member's excess over its target.
"""
from __future__ import annotations

import base64
import itertools
import zlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipfarm.assignment import NO_OWNER, Assignment, Member, assign, moved, targets

NAMES = "abcdefgh"
SMALL_BUCKETS = [1 << k for k in range(0, 11)]      # 1 .. 1024
ALL_BUCKETS = [1 << k for k in range(0, 13)]        # 1 .. 4096


def member_sets(min_size: int = 1, max_size: int = 8):
    """1..8 members with distinct names from a small alphabet, weights 0..10, live or dead."""
    return st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 10), st.booleans()),
                    min_size=min_size, max_size=max_size, unique_by=lambda t: t[0]).map(
        lambda rows: [Member(n, w, live) for n, w, live in rows])


# -- independent reference computations ----------------------------------------------------

def live_weighted(members):
    return [m for m in members if m.live and m.weight > 0]


def floors(members, buckets):
    live = live_weighted(members)
    total = sum(m.weight for m in live)
    return {m.name: buckets * m.weight // total for m in live}


def assert_balanced(result: Assignment, members, buckets: int) -> None:
    assert result.buckets == buckets
    counts = Counter(result.owner_names())
    live = live_weighted(members)
    if not live:
        assert all(o == NO_OWNER for o in result.owners), "no live weighted member, yet a bucket has an owner"
        return
    assert counts[None] == 0, f"{counts[None]} buckets have no owner although live members exist"
    fl = floors(members, buckets)
    for m in members:
        got = counts.get(m.name, 0)
        if m.name in fl:
            assert got in (fl[m.name], fl[m.name] + 1), (
                f"{m} holds {got} buckets; balance needs {fl[m.name]} or {fl[m.name] + 1}")
        else:
            assert got == 0, f"{m} is dead or has weight 0 but holds {got} buckets"
    assert set(counts) <= {m.name for m in members}


def minimum_moves(prev: Assignment | None, members, buckets: int) -> int:
    """The fewest buckets any balanced outcome can move from prev, by enumeration."""
    prev_names = prev.owner_names() if prev is not None and prev.buckets == buckets else [None] * buckets
    live = live_weighted(members)
    if not live:
        # every bucket ends without owner: the ones that had an owner move
        return sum(1 for n in prev_names if n is not None)
    fl = floors(members, buckets)
    live_names = set(fl)
    orphans = sum(1 for n in prev_names if n not in live_names)
    prev_count = Counter(n for n in prev_names if n in live_names)
    leftover = buckets - sum(fl.values())
    assert 0 <= leftover < len(live)
    best = None
    for extra in itertools.combinations(sorted(live_names), leftover):
        target = {n: fl[n] + (1 if n in extra else 0) for n in live_names}
        cost = orphans + sum(max(0, prev_count[n] - target[n]) for n in live_names)
        best = cost if best is None else min(best, cost)
    return best


# -- balance --------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(members=member_sets(), buckets=st.sampled_from(SMALL_BUCKETS))
def test_fresh_assignment_is_balanced_with_every_bucket_owned(members, buckets):
    assert_balanced(assign(None, members, buckets), members, buckets)


@settings(max_examples=40, deadline=None)
@given(members=member_sets(), buckets=st.sampled_from(ALL_BUCKETS))
def test_balance_holds_up_to_4096_buckets(members, buckets):
    assert_balanced(assign(None, members, buckets), members, buckets)


@settings(max_examples=200, deadline=None)
@given(earlier=member_sets(), members=member_sets(), buckets=st.sampled_from(SMALL_BUCKETS))
def test_reassignment_from_any_previous_is_balanced(earlier, members, buckets):
    prev = assign(None, earlier, buckets)
    assert_balanced(assign(prev, members, buckets), members, buckets)


@settings(max_examples=200, deadline=None)
@given(members=member_sets(), buckets=st.sampled_from(SMALL_BUCKETS))
def test_targets_sum_to_bucket_count_and_give_dead_or_unweighted_members_nothing(members, buckets):
    want = targets(members, buckets)
    live = live_weighted(members)
    assert sum(want.values()) == (buckets if live else 0)
    fl = floors(members, buckets) if live else {}
    for m in members:
        if m.name in fl:
            assert want[m.name] in (fl[m.name], fl[m.name] + 1)
        else:
            assert want[m.name] == 0


def test_all_members_dead_leaves_every_bucket_without_owner():
    members = [Member("a", 1, False), Member("b", 3, False), Member("c", 0, True)]
    result = assign(None, members, 64)
    assert result.owners == (NO_OWNER,) * 64
    assert result.owner_of(0) is None
    assert result.counts() == {"a": 0, "b": 0, "c": 0}


# -- minimal movement -------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(earlier=member_sets(), members=member_sets(), buckets=st.sampled_from(SMALL_BUCKETS))
def test_moves_equal_the_minimum_over_all_balanced_outcomes(earlier, members, buckets):
    prev = assign(None, earlier, buckets)
    result = assign(prev, members, buckets)
    assert_balanced(result, members, buckets)
    assert moved(prev, result) == minimum_moves(prev, members, buckets)


@settings(max_examples=200, deadline=None)
@given(first=member_sets(), second=member_sets(), members=member_sets(),
       buckets=st.sampled_from(SMALL_BUCKETS))
def test_moves_are_minimal_after_a_chain_of_membership_changes(first, second, members, buckets):
    prev = assign(assign(None, first, buckets), second, buckets)
    result = assign(prev, members, buckets)
    assert moved(prev, result) == minimum_moves(prev, members, buckets)


@st.composite
def arbitrary_previous(draw):
    """A previous assignment that need not be balanced (e.g. written by an older version)."""
    buckets = draw(st.sampled_from([1 << k for k in range(0, 7)]))
    names = tuple(sorted(draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True))))
    owners = tuple(draw(st.lists(st.integers(NO_OWNER, len(names) - 1),
                                 min_size=buckets, max_size=buckets)))
    return Assignment(names, owners)


@settings(max_examples=200, deadline=None)
@given(prev=arbitrary_previous(), members=member_sets())
def test_moves_are_minimal_even_from_an_unbalanced_previous_assignment(prev, members):
    result = assign(prev, members, prev.buckets)
    assert_balanced(result, members, prev.buckets)
    assert moved(prev, result) == minimum_moves(prev, members, prev.buckets)


# -- determinism and persistence --------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(earlier=member_sets(), data=st.data(), buckets=st.sampled_from(SMALL_BUCKETS))
def test_member_order_does_not_change_the_assignment(earlier, data, buckets):
    members = data.draw(member_sets())
    shuffled = data.draw(st.permutations(members))
    prev = assign(None, earlier, buckets)
    assert assign(prev, members, buckets) == assign(prev, shuffled, buckets)
    assert assign(None, members, buckets) == assign(None, list(reversed(members)), buckets)


@settings(max_examples=100, deadline=None)
@given(earlier=member_sets(), members=member_sets(), buckets=st.sampled_from(SMALL_BUCKETS))
def test_calling_assign_twice_gives_equal_results(earlier, members, buckets):
    prev = assign(None, earlier, buckets)
    assert assign(prev, members, buckets) == assign(prev, members, buckets)


@settings(max_examples=200, deadline=None)
@given(earlier=member_sets(), members=member_sets(), buckets=st.sampled_from(SMALL_BUCKETS))
def test_nothing_moves_when_membership_is_unchanged(earlier, members, buckets):
    once = assign(assign(None, earlier, buckets), members, buckets)
    again = assign(once, members, buckets)
    assert again == once
    assert moved(once, again) == 0


def test_member_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        assign(None, [Member("a"), Member("a", 2)], 16)


def test_previous_with_another_bucket_count_is_ignored():
    members = [Member("a"), Member("b", 2), Member("c")]
    prev = assign(None, [Member("c"), Member("d")], 512)
    assert assign(prev, members, 1024) == assign(None, members, 1024)
    assert moved(prev, assign(prev, members, 1024)) == 1024


# -- explicit membership changes ----------------------------------------------------------------

def three_nodes(**weights):
    return [Member(n, weights.get(n, 1)) for n in ("n1", "n2", "n3")]


def test_removing_a_node_moves_only_its_buckets():
    before = assign(None, three_nodes(), 1024)
    assert sorted(before.counts().values()) == [341, 341, 342]
    after = assign(before, [Member("n1"), Member("n3")], 1024)
    assert after.counts() == {"n1": 512, "n3": 512}
    b_names, a_names = before.owner_names(), after.owner_names()
    for b in range(1024):
        if b_names[b] != "n2":
            assert a_names[b] == b_names[b], f"bucket {b} of {b_names[b]} moved to {a_names[b]}"
    assert moved(before, after) == before.counts()["n2"]


def test_a_failed_node_loses_its_buckets_and_only_those_move():
    before = assign(None, three_nodes(), 1024)
    members = [Member("n1"), Member("n2", 1, live=False), Member("n3")]
    after = assign(before, members, 1024)
    assert after.counts() == {"n1": 512, "n2": 0, "n3": 512}
    assert after.owned_by("n2") == []
    assert moved(before, after) == len(before.owned_by("n2"))
    assert set(before.owned_by("n1")) <= set(after.owned_by("n1"))
    assert set(before.owned_by("n3")) <= set(after.owned_by("n3"))


def test_a_recovered_node_takes_back_a_fair_share_and_only_that_moves():
    members = [Member("n1"), Member("n2", 1, live=False), Member("n3")]
    degraded = assign(None, members, 1024)
    recovered = assign(degraded, three_nodes(), 1024)
    counts = recovered.counts()
    assert sorted(counts.values()) == [341, 341, 342]
    assert moved(degraded, recovered) == counts["n2"]
    for b, (x, y) in enumerate(zip(degraded.owner_names(), recovered.owner_names())):
        if x != y:
            assert y == "n2", f"bucket {b} moved from {x} to {y}, not to the returning node"


def test_a_joining_node_takes_its_share_from_the_others_and_nothing_else_moves():
    before = assign(None, [Member("n1"), Member("n2")], 1024)
    after = assign(before, three_nodes(), 1024)
    assert sorted(after.counts().values()) == [341, 341, 342]
    changed = [(x, y) for x, y in zip(before.owner_names(), after.owner_names()) if x != y]
    assert all(y == "n3" for _, y in changed)
    assert len(changed) == after.counts()["n3"] == moved(before, after)


def test_raising_a_weight_moves_buckets_only_to_that_node():
    before = assign(None, three_nodes(), 1024)
    after = assign(before, three_nodes(n2=2), 1024)
    assert after.counts() == {"n1": 256, "n2": 512, "n3": 256}
    assert set(before.owned_by("n2")) <= set(after.owned_by("n2"))
    assert moved(before, after) == 512 - len(before.owned_by("n2"))


def test_weight_zero_drains_a_node_like_a_removal():
    before = assign(None, three_nodes(), 1024)
    after = assign(before, three_nodes(n3=0), 1024)
    assert after.counts() == {"n1": 512, "n2": 512, "n3": 0}
    assert moved(before, after) == len(before.owned_by("n3"))


def test_one_bucket_goes_to_exactly_one_live_member():
    result = assign(None, three_nodes(), 1)
    assert sum(result.counts().values()) == 1
    assert result.owner_of(0) in {"n1", "n2", "n3"}


def test_moved_from_nothing_counts_every_owned_bucket():
    after = assign(None, three_nodes(), 256)
    assert moved(None, after) == 256


# -- wire form ---------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True),
       buckets=st.sampled_from(ALL_BUCKETS), rng=st.randoms(use_true_random=False),
       none_share=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_encode_then_decode_gives_back_the_same_assignment(names, buckets, rng, none_share):
    names = tuple(sorted(names))
    owners = tuple(NO_OWNER if rng.random() < none_share else rng.randrange(len(names))
                   for _ in range(buckets))
    a = Assignment(names, owners)
    text = a.encode()
    assert text.startswith("z1:")
    assert Assignment.decode(list(names), text) == a


def test_encode_round_trips_no_owner_and_a_real_assignment():
    empty = Assignment(("a", "b"), (NO_OWNER,) * 16)
    assert Assignment.decode(["a", "b"], empty.encode()) == empty
    real = assign(None, three_nodes(n1=3), 65536)
    assert Assignment.decode(real.members, real.encode()) == real


def test_encoding_is_zlib_of_little_endian_u16_with_ffff_for_no_owner():
    a = Assignment(("a", "b"), (0, 1, NO_OWNER, 1))
    raw = zlib.decompress(base64.b64decode(a.encode()[3:]))
    assert raw == bytes([0, 0, 1, 0, 0xFF, 0xFF, 1, 0])


@pytest.mark.parametrize("text", ["z2:" + base64.b64encode(zlib.compress(b"\0\0")).decode(),
                                  "", "eJwDAAAAAAE=", "Z1:abc"])
def test_decode_rejects_an_unknown_prefix(text):
    with pytest.raises(ValueError, match="encoding"):
        Assignment.decode(["a"], text)


def test_decode_rejects_an_owner_index_beyond_the_member_list():
    text = Assignment(("a", "b", "c"), (0, 2, 1)).encode()
    with pytest.raises(ValueError, match="member #2"):
        Assignment.decode(["a", "b"], text)
