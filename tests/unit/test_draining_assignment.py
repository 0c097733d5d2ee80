"""vipfarm.agreement for a draining member: it keeps its vote and, like a withdrawn one, gets
no buckets for new flows; the agreement digest names it, so peers take its buckets only once
they all know of the drain."""
from __future__ import annotations

from vipfarm.agreement import agreed_view, agreement_digest, effective_assignment, quorum, serving_weights
from vipfarm.assignment import moved
from vipfarm.base_assignment import first_base

WEIGHTS = {"a": 1, "b": 2, "c": 1, "d": 1}
ALL = frozenset(WEIGHTS)


def full(names):
    return {n: frozenset(names) for n in names}


def test_serving_weights_zero_the_withdrawn_and_the_draining_and_keep_the_others():
    weights = dict(WEIGHTS)
    assert serving_weights(weights, withdrawn={"a"}, draining={"c"}) == {"a": 0, "b": 2, "c": 0, "d": 1}
    assert serving_weights(weights) == WEIGHTS
    assert weights == WEIGHTS, "serving_weights changed its input"


def test_a_draining_member_keeps_its_vote_in_the_view():
    # b is draining but still heartbeats: the view keeps it, so a 4-node farm that loses d
    # still has its quorum of 3 (a, b, c) and keeps serving.
    rows = full("abc")
    view = agreed_view(rows, ALL, quorum(len(ALL)))
    assert view == frozenset("abc")
    base = first_base(WEIGHTS, 1024).assignment
    after = effective_assignment(base, serving_weights(WEIGHTS, draining={"b"}), view)
    assert after.counts().get("b", 0) == 0 and sum(after.counts().values()) == 1024
    assert set(after.counts()) - {"b", "d"} == {"a", "c"}


def test_a_drained_members_buckets_go_to_the_others_by_weight_and_nothing_else_moves():
    base = first_base(WEIGHTS, 1024).assignment
    drained = effective_assignment(base, serving_weights(WEIGHTS, draining={"b"}), ALL)
    assert moved(base, drained) == len(base.owned_by("b"))
    for n in "acd":
        assert set(base.owned_by(n)) <= set(drained.owned_by(n))
    counts = drained.counts()
    assert counts.get("b", 0) == 0 and all(abs(counts[n] - 1024 / 3) <= 1 for n in "acd"), counts


def test_draining_and_withdrawn_give_the_same_buckets():
    base = first_base(WEIGHTS, 1024).assignment
    assert effective_assignment(base, serving_weights(WEIGHTS, draining={"c"}), ALL) == \
        effective_assignment(base, serving_weights(WEIGHTS, withdrawn={"c"}), ALL)


def test_an_undrain_gives_back_exactly_the_base_buckets():
    base = first_base(WEIGHTS, 1024).assignment
    drained = effective_assignment(base, serving_weights(WEIGHTS, draining={"b"}), ALL)
    undrained = effective_assignment(base, serving_weights(WEIGHTS), ALL)
    assert undrained == base
    assert moved(drained, undrained) == len(base.owned_by("b"))


def test_the_agreement_digest_names_the_draining_members():
    plain = agreement_digest(b"x" * 8, "abcd", ["a"])
    assert agreement_digest(b"x" * 8, "abcd", ["a"], ()) == plain, "no drain must keep the old digest"
    assert agreement_digest(b"x" * 8, "abcd", ["a"], ["b"]) != plain
    assert agreement_digest(b"x" * 8, "abcd", ["a"], ["b"]) != agreement_digest(b"x" * 8, "abcd", ["a", "b"])
    assert agreement_digest(b"x" * 8, "abcd", (), ["c", "b"]) == agreement_digest(b"x" * 8, "dcba", (), ["b", "c"])
