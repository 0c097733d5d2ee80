"""A farm's timeline as one node saw it: failovers, rejoins, drains, joins, leaves and weight
changes, with each failover's duration. A pure fold over what the agent programmed.

The agent calls `record(timeline, Programmed(...))` each time it has programmed a decision of
the heartbeat thread into its filter; the fold compares the decision's view, draining set and
configured members with the previous ones and appends the events they imply. Nothing here
reads a clock: the caller passes the monotonic time of the programming and its wall-clock
text (RFC 3339), so a test drives it with plain numbers.

A failover's duration (the observability contract, README "Metrics and health endpoints"):
from the lost member's last accepted heartbeat to the moment this node programmed the view
without it, on the monotonic clock, as this node saw it. With several members lost at once
the earliest last heartbeat counts (the longest of them); a member never heard has none, and
a failover of only such members has no duration.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

FAILOVER = "Failover"
REJOIN = "Rejoin"
DRAIN = "Drain"
UNDRAIN = "Undrain"
JOIN = "Join"
LEAVE = "Leave"
WEIGHT_CHANGE = "WeightChange"
EVENTS_KEPT = 50
# The histogram's upper bounds (seconds) for vipfarm_failover_duration_seconds: around the
# default timeoutMs (300 ms) and the tuned ones (100 ms), up to an operator's slow settings.
DURATION_BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class Programmed:
    """One programming of a farm's decision, as the fold needs it."""
    at_ns: int                          # monotonic ns, right after the filter was written
    at: str                             # the same moment, RFC 3339 UTC
    weights: Mapping[str, int]          # configured members -> weight
    view: frozenset[str]
    draining: frozenset[str]
    last_heard_ns: Mapping[str, int]    # peer -> monotonic ns its last heartbeat was accepted


@dataclass(frozen=True)
class TimelineEvent:
    at: str
    kind: str
    nodes: tuple[str, ...]
    duration_ms: int | None = None


@dataclass(frozen=True)
class Timeline:
    weights: Mapping[str, int] | None = None        # None: nothing programmed yet
    view: frozenset[str] = frozenset()
    draining: frozenset[str] = frozenset()
    events: tuple[TimelineEvent, ...] = ()          # the last EVENTS_KEPT, oldest first
    last_failover: TimelineEvent | None = None
    failovers: int = 0
    duration_counts: tuple[int, ...] = (0,) * len(DURATION_BOUNDS)   # per bound, not cumulative
    duration_sum_s: float = 0.0
    durations_observed: int = 0


def record(t: Timeline, p: Programmed) -> Timeline:
    """The timeline after one programming. The first one only sets the baseline (an agent
    start is no event)."""
    if t.weights is None:
        return replace(t, weights=dict(p.weights), view=frozenset(p.view), draining=frozenset(p.draining))
    new: list[TimelineEvent] = []
    joined = sorted(set(p.weights) - set(t.weights))
    left = sorted(set(t.weights) - set(p.weights))
    if joined:
        new.append(TimelineEvent(p.at, JOIN, tuple(joined)))
    if left:
        new.append(TimelineEvent(p.at, LEAVE, tuple(left)))
    reweighted = sorted(n for n in set(p.weights) & set(t.weights) if p.weights[n] != t.weights[n])
    if reweighted:
        new.append(TimelineEvent(p.at, WEIGHT_CHANGE, tuple(reweighted)))
    lost = sorted((t.view - p.view) & set(p.weights))
    failover = None
    if lost:
        heard = [p.last_heard_ns[n] for n in lost if n in p.last_heard_ns]
        duration = max(0, (p.at_ns - min(heard)) // 1_000_000) if heard else None
        failover = TimelineEvent(p.at, FAILOVER, tuple(lost), duration)
        new.append(failover)
    back = sorted((p.view - t.view) & set(t.weights))
    if back:
        new.append(TimelineEvent(p.at, REJOIN, tuple(back)))
    drains = sorted(p.draining - t.draining)
    if drains:
        new.append(TimelineEvent(p.at, DRAIN, tuple(drains)))
    undrains = sorted((t.draining - p.draining) & p.view)
    if undrains:
        new.append(TimelineEvent(p.at, UNDRAIN, tuple(undrains)))
    out = replace(t, weights=dict(p.weights), view=frozenset(p.view), draining=frozenset(p.draining),
                  events=(t.events + tuple(new))[-EVENTS_KEPT:])
    if failover is not None:
        out = replace(out, last_failover=failover, failovers=t.failovers + 1)
        if failover.duration_ms is not None:
            out = _observe(out, failover.duration_ms / 1000.0)
    return out


def _observe(t: Timeline, seconds: float) -> Timeline:
    counts = list(t.duration_counts)
    for i, bound in enumerate(DURATION_BOUNDS):
        if seconds <= bound:
            counts[i] += 1
            break
    return replace(t, duration_counts=tuple(counts), duration_sum_s=t.duration_sum_s + seconds,
                   durations_observed=t.durations_observed + 1)


def cumulative_buckets(t: Timeline) -> list[tuple[str, int]]:
    """The failover duration histogram as Prometheus buckets: (upper bound, cumulative count),
    ending with +Inf = every observation."""
    out, running = [], 0
    for bound, n in zip(DURATION_BOUNDS, t.duration_counts):
        running += n
        out.append((repr(bound), running))
    out.append(("+Inf", t.durations_observed))
    return out
