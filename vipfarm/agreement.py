"""One agreed view of who is alive, and the buckets each node serves under it. Pure.

Every member heartbeats every other (nodeagent/heartbeat.py) and relays the freshest
reachability row it knows of every member (vipfarm/liveness.py keeps them). From those rows
each node builds the same matrix and computes the same view with `agreed_view`:

    start from the members whose row is fresh; repeatedly remove any member that has fewer
    than a quorum (a strict majority of the configured members) of two-way links inside the
    set (a two-way link: each lists the other as heard; a member counts itself);

the peeling always ends in the unique largest such set. Because a quorum is a majority, two
disjoint groups can never both form a view, so a partition leaves at most one side serving
(`quorum` explains the 2-node exception). One-way loss (A stops hearing B while C hears both)
removes nobody as long as both still have a quorum of two-way links: nothing moves at all.

The buckets follow from the view and the farm's *base* assignment (the assignment with every
configured member live: the operator's in cluster mode, the farm file's chain in standalone
mode): `effective_assignment` = assign(base, members live iff in the view). assign() keeps
every live member's buckets up to its share, so a lost member's buckets are spread over the
survivors by weight and nothing else moves; a healed member gets its base buckets back.
A second loss while the first is still out may re-spread the first one's buckets among the
survivors (the function depends on the base and the view only, never on the order of
losses, which is what lets a restarted node and the operator compute the same result).

Release early, acquire late (`buckets_to_serve`): a node gives up buckets as soon as its own
view no longer gives them to it, but takes new ones only once every member of its view
advertises the same agreement digest (same base, same view). The price of disagreement is a
short gap, never two owners.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

from .assignment import Assignment, Member, assign


def quorum(configured: int, witness: bool = False) -> int:
    """Votes a view needs: a strict majority of the configured members, plus the witness's
    vote when the farm names one.

    A 1-node farm needs itself. A 2-node farm needs both, so either loss stops it, unless the
    farm names a witness (spec.heartbeat.witness): then 2 of 3 votes, and the node that still
    hears the witness serves alone. The price: if both nodes hear the witness but not each
    other (only the heartbeat path broke), both serve every bucket.
    """
    return (configured + (1 if witness else 0)) // 2 + 1


def agreed_view(rows: Mapping[str, frozenset[str]], members: Iterable[str], votes_needed: int,
                hears_witness: Iterable[str] = ()) -> frozenset[str]:
    """The view every node computes from the same rows.

    rows: for each member with a fresh row, the members it lists as heard (missing = no fresh
    row: that member is out). Names outside `members` are ignored.
    hears_witness: the members whose fresh row says they hear the farm's witness (one vote each).
    """
    configured = frozenset(members)
    bonus = frozenset(hears_witness)
    view = {m for m in configured if m in rows}
    while True:
        drop = {m for m in view
                if 1 + (m in bonus) + sum(1 for o in view if o != m and o in rows[m] and m in rows[o]) < votes_needed}
        if not drop:
            return frozenset(view)
        view -= drop


def agreement_digest(base_digest: bytes, view: Iterable[str], withdrawn: Iterable[str] = (),
                     draining: Iterable[str] = ()) -> bytes:
    """8 bytes naming (base assignment, view, withdrawn members, draining members): equal
    digests mean the same buckets everywhere. No draining member: the digest is the one
    (base, view, withdrawn) always had, so agents that know no drain agree with those that do."""
    h = hashlib.sha256(b"vipfarm-agree:" + base_digest)
    for name in sorted(view):
        h.update(b"\0+" + name.encode())
    for name in sorted(withdrawn):
        h.update(b"\0-" + name.encode())
    for name in sorted(draining):
        h.update(b"\0~" + name.encode())
    return h.digest()[:8]


def serving_weights(weights: Mapping[str, int], withdrawn: Iterable[str] = (),
                    draining: Iterable[str] = ()) -> dict[str, int]:
    """The weights the assignment under a view is computed with (pass them to
    `effective_assignment`): a withdrawn member (its checkers fail) and a draining member
    (drain: true, a cordoned or vipfarm.io/drain Node) both stay in the view and keep their
    vote, but get weight 0, so no bucket takes new flows for them; their buckets go to the
    others by weight and nothing else moves, and an undrain gives back exactly the base
    buckets. The two differ in the dataplane only: a withdrawn member stops answering at once,
    a draining one keeps its established flows in the buckets it gave up until they end or
    spec.handover.drainTimeoutSeconds passes."""
    out = frozenset(withdrawn) | frozenset(draining)
    return {n: (0 if n in out else w) for n, w in weights.items()}


def effective_assignment(base: Assignment, weights: Mapping[str, int], view: Iterable[str]) -> Assignment:
    """The assignment under `view`: the base with every member outside it dead."""
    live = frozenset(view)
    return assign(base, [Member(n, weights.get(n, 0), n in live) for n in base.members], base.buckets)


@dataclass(frozen=True)
class Serving:
    """What one node programs: its buckets, and why."""
    buckets: frozenset[int]
    agreed: bool
    released: int     # buckets given up relative to `current`
    withheld: int     # buckets the view gives it that it does not take yet (no agreement)


def buckets_to_serve(node: str, target: Assignment | None, current: frozenset[int], agreed: bool) -> Serving:
    """Release early, acquire late: with agreement, the target; without, only what it already
    has and still keeps under the target. `target` None (not in a view): nothing."""
    want = frozenset(target.owned_by(node)) if target is not None else frozenset()
    have = want if agreed else current & want
    return Serving(have, agreed, len(current - have), len(want - have))
