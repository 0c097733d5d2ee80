"""Planned moves that reset nothing: which of a node's buckets are in transition.

Every node sees every packet, so a bucket's old owner can keep serving its own flows itself
while the new owner takes the new ones (DESIGN.md, "Handover"). The filter gives a bucket
that is *moving* on this node the slow path: a packet whose 4-tuple this node's kernel knows
is taken whoever owns the bucket ("state wins"), a SYN only by the owner, any other segment
by nobody (no node's stack answers another node's flow with a RST). A bucket that is not
moving keeps the fast path: the owner takes everything.

A node's moving buckets are the union of two sets, both derived from what the node sees now,
so an agent restarted in the middle of a handover recomputes them (nothing is persisted but
the drain clocks, which a restart only restarts):

- draining: buckets this node no longer owns in which its kernel still has flows (the flow
  census); ends per bucket when the census finds none, or, when `drain_timeout` passes, by
  cutting the flows left (the caller logs and reports how many);
- pending: buckets this node acquired while some member may still drain them: each acquired
  bucket stays pending for a guard time after the acquisition (the old owner's heartbeat that
  says it hands over may come a little after the one that let this node acquire), and after
  that while any member's row says it still hands flows over.

Pure functions: the agent's main thread calls them with the census, the clock and the
members' flags, and programs (owned, moving) into the filter in one flip.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Drain:
    """This node's drain of one farm: the buckets it still hands over, since when, and what
    the drain timeout cut."""
    since: Mapping[int, int] = field(default_factory=dict)     # bucket -> monotonic ns the drain started
    flows: Mapping[int, int] = field(default_factory=dict)     # bucket -> flows left (the last census)
    cut: Mapping[int, int] = field(default_factory=dict)       # bucket -> flows this step's timeout cut
    expired: frozenset[int] = frozenset()    # cut earlier, sockets not gone yet: never drained again

    @property
    def buckets(self) -> frozenset[int]:
        return frozenset(self.since)

    @property
    def flows_left(self) -> int:
        return sum(self.flows.values())


def drain_step(previous: Drain, owned: frozenset[int], census: Mapping[int, int], now_ns: int,
               timeout_ns: int) -> Drain:
    """The drain after a census (bucket -> this node's flows in it): every bucket not owned
    with flows in it drains, from the time it first did. One past `timeout_ns` is cut: its
    flows are counted in `cut` once, and it stays out of the drain (`expired`) until its
    sockets are gone or this node owns it again (the cut flows' sockets outlive the cut until
    the stack times them out; they must not start a new drain)."""
    since: dict[int, int] = {}
    flows: dict[int, int] = {}
    cut: dict[int, int] = {}
    expired = set()
    for b, n in census.items():
        if n <= 0 or b in owned:
            continue
        if b in previous.expired:
            expired.add(b)
            continue
        start = previous.since.get(b, now_ns)
        if now_ns - start >= timeout_ns:
            cut[b] = n
            expired.add(b)
            continue
        since[b], flows[b] = start, n
    return Drain(since, flows, cut, frozenset(expired))


def drain_begin(previous: Drain, released: frozenset[int], now_ns: int, timeout_ns: int) -> Drain:
    """At the programming that releases `released`, before any census: presume each of them
    drains (the census that follows, moments later, ends the drain of those with no flows).
    The old owner's flows must be on the slow path from the very flip that gives the bucket
    away, and a census of a large socket table would delay that flip. Handover off
    (`timeout_ns` 0): nothing drains. What an earlier census cut is not repeated (`cut` is
    always empty here)."""
    if timeout_ns <= 0:
        return Drain(previous.since, previous.flows, {}, previous.expired)
    since = dict(previous.since)
    for b in released:
        if b not in previous.expired:
            since.setdefault(b, now_ns)
    return Drain(since, previous.flows, {}, previous.expired)


@dataclass(frozen=True)
class Pending:
    """Buckets this node acquired while another member may still drain them."""
    until: Mapping[int, int] = field(default_factory=dict)     # bucket -> end of its guard time (ns)

    @property
    def buckets(self) -> frozenset[int]:
        return frozenset(self.until)


def pending_step(previous: Pending, owned_before: frozenset[int], owned: frozenset[int], now_ns: int,
                 guard_ns: int, peers_handing_over: bool) -> Pending:
    """Newly acquired buckets start a guard time; a pending bucket ends when this node no
    longer owns it, or when its guard is over and no member hands flows over any more."""
    until = {b: t for b, t in previous.until.items()
             if b in owned and (peers_handing_over or now_ns < t)}
    for b in owned - owned_before:
        until[b] = max(until.get(b, 0), now_ns + guard_ns)
    return Pending(until)


def moving_buckets(drain: Drain, pending: Pending) -> frozenset[int]:
    """What the filter gives the slow path on this node."""
    return drain.buckets | pending.buckets


@dataclass(frozen=True)
class HandoverTotals:
    """A farm's handovers since the agent started (the observability endpoint's counters)."""
    started: int = 0          # programmings that started a drain (none was running)
    flows_drained: int = 0    # held flows that ended on their own (the census counted fewer)
    flows_cut: int = 0        # held flows still open at drainTimeout


def add_step(totals: HandoverTotals, before: Drain, after: Drain) -> HandoverTotals:
    """The totals after one committed drain step from `before` to `after`: a flow counted in a
    draining bucket and not any more ended on its own, unless the step cut its bucket."""
    drained = sum(max(0, n - after.flows.get(b, 0)) for b, n in before.flows.items() if b not in after.cut)
    return HandoverTotals(totals.started + (1 if after.since and not before.since else 0),
                          totals.flows_drained + drained, totals.flows_cut + sum(after.cut.values()))


def bucket_runs(buckets: frozenset[int]) -> list[tuple[int, int]]:
    """[(first, count), ...] of consecutive buckets, ascending: a compact form for logs."""
    out: list[tuple[int, int]] = []
    for b in sorted(buckets):
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out
