"""vipfarm.agreement: one view from the matrix, the buckets under it, release early / acquire late."""
from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from vipfarm.agreement import (agreed_view, agreement_digest, buckets_to_serve, effective_assignment,
                               quorum)
from vipfarm.assignment import moved
from vipfarm.base_assignment import first_base

NODES = ("a", "b", "c")


def full(names):
    return {n: frozenset(names) for n in names}


def test_quorum_is_a_strict_majority():
    assert [quorum(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_everyone_hearing_everyone_is_the_whole_farm():
    assert agreed_view(full(NODES), NODES, 2) == frozenset(NODES)


def test_a_member_without_a_fresh_row_is_out():
    rows = {"a": frozenset("ab"), "b": frozenset("ab")}
    assert agreed_view(rows, NODES, 2) == frozenset("ab")


def test_one_way_loss_removes_nobody_while_both_keep_a_quorum():
    # a stops hearing b; c hears both; b still hears a.
    rows = {"a": frozenset("ac"), "b": frozenset("abc"), "c": frozenset("abc")}
    assert agreed_view(rows, NODES, 2) == frozenset(NODES)


def test_a_member_that_hears_nobody_is_removed_even_if_others_hear_it():
    rows = {"a": frozenset("a"), "b": frozenset("abc"), "c": frozenset("abc")}
    assert agreed_view(rows, NODES, 2) == frozenset("bc")


def test_the_minority_side_of_a_partition_has_no_view():
    five = "abcde"
    major = {n: frozenset("abc") for n in "abc"}
    minor = {n: frozenset("de") for n in "de"}
    assert agreed_view(major, five, 3) == frozenset("abc")
    assert agreed_view(minor, five, 3) == frozenset()


def test_removal_cascades_until_every_member_keeps_a_quorum():
    # a-b, b-c, c-d two-way only: with quorum 3 nobody has two two-way peers... except b and c
    rows = {"a": frozenset("ab"), "b": frozenset("abc"), "c": frozenset("bcd"), "d": frozenset("cd")}
    assert agreed_view(rows, "abcd", 3) == frozenset()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from("abcde")), max_size=25),
       st.sets(st.sampled_from("abcde"), min_size=1))
def test_any_two_views_of_one_farm_overlap(links, fresh):
    """Quorum: whatever two nodes' matrices are, their views are never disjoint (both non-empty)."""
    rows = {n: frozenset({n} | {b for a, b in links if a == n}) for n in fresh}
    other = {n: frozenset({n} | {a for a, b in links if b == n}) for n in "abcde"}
    v1, v2 = agreed_view(rows, "abcde", 3), agreed_view(other, "abcde", 3)
    assert not v1 or not v2 or v1 & v2
    for v, r in ((v1, rows), (v2, other)):
        for m in v:
            assert 1 + sum(1 for o in v if o != m and o in r[m] and m in r[o]) >= 3


def test_agreement_digest_depends_on_base_and_view_only():
    assert agreement_digest(b"x" * 8, ["b", "a"]) == agreement_digest(b"x" * 8, ["a", "b"])
    assert agreement_digest(b"x" * 8, ["a"]) != agreement_digest(b"x" * 8, ["a", "b"])
    assert agreement_digest(b"y" * 8, ["a"]) != agreement_digest(b"x" * 8, ["a"])


WEIGHTS = {"a": 1, "b": 2, "c": 1, "d": 1}


def test_a_lost_members_buckets_go_to_the_survivors_by_weight_and_nothing_else_moves():
    base = first_base(WEIGHTS, 1024).assignment
    after = effective_assignment(base, WEIGHTS, "abd")
    assert moved(base, after) == len(base.owned_by("c"))
    for n in "abd":
        assert set(base.owned_by(n)) <= set(after.owned_by(n))
    counts = after.counts()
    assert counts["c"] == 0 and sum(counts.values()) == 1024
    assert abs(counts["b"] - 2 * 1024 / 4) <= 1 and abs(counts["a"] - 1024 / 4) <= 1


def test_a_healed_member_gets_exactly_its_base_buckets_back():
    base = first_base(WEIGHTS, 1024).assignment
    lost = effective_assignment(base, WEIGHTS, "abd")
    healed = effective_assignment(base, WEIGHTS, "abcd")
    assert healed == base
    assert moved(lost, healed) == len(base.owned_by("c"))


@settings(max_examples=200, deadline=None)
@given(st.sets(st.sampled_from("abcd")), st.permutations("abcd"))
def test_every_node_given_the_same_view_computes_the_same_owners(view, order):
    """Determinism: the owners depend on the base and the view, not on who computes or in what order."""
    base = first_base(WEIGHTS, 256).assignment
    results = {effective_assignment(base, {n: WEIGHTS[n] for n in order}, sorted(view, key=order.index))
               for _ in range(2)}
    assert len(results) == 1
    owners = results.pop()
    assert all(o is None or o in view for o in owners.owner_names())
    if view:
        assert None not in owners.owner_names()


def test_every_bucket_has_exactly_one_owner_when_all_nodes_share_a_view():
    base = first_base(WEIGHTS, 1024).assignment
    for view in itertools.chain.from_iterable(itertools.combinations("abcd", k) for k in range(1, 5)):
        target = effective_assignment(base, WEIGHTS, view)
        served = [buckets_to_serve(n, target, frozenset(), True).buckets for n in view]
        assert sum(len(s) for s in served) == 1024
        assert frozenset().union(*served) == frozenset(range(1024))


def test_without_agreement_a_node_releases_but_never_acquires():
    base = first_base(WEIGHTS, 64).assignment
    target = effective_assignment(base, WEIGHTS, "abd")
    current = frozenset(base.owned_by("a")) | {base.owned_by("b")[0]}
    s = buckets_to_serve("a", target, current, agreed=False)
    assert s.buckets == frozenset(base.owned_by("a"))
    assert s.released == 1 and s.withheld == len(target.owned_by("a")) - len(base.owned_by("a"))
    assert buckets_to_serve("a", target, current, agreed=True).buckets == frozenset(target.owned_by("a"))
    assert buckets_to_serve("a", None, current, agreed=True).buckets == frozenset()


def test_a_two_node_farm_without_a_witness_stops_when_either_node_is_lost():
    assert agreed_view({"a": frozenset("a")}, "ab", quorum(2)) == frozenset()


def test_with_a_witness_the_node_that_hears_it_serves_alone():
    q = quorum(2, witness=True)
    assert q == 2
    assert agreed_view({"a": frozenset("a")}, "ab", q, hears_witness={"a"}) == frozenset("a")
    assert agreed_view({"b": frozenset("b")}, "ab", q, hears_witness=set()) == frozenset()
    assert agreed_view(full("ab"), "ab", q, hears_witness={"a", "b"}) == frozenset("ab")
