"""Kubernetes Events about a Farm, as pure data: what a checker or recovery transition says,
the events.k8s.io/v1 body that says it, and the rate limit that keeps flapping from flooding
the API server. No I/O and no kubernetes import; the agent's shell (nodeagent/event_poster.py)
posts the bodies.

Farms are cluster scoped, and the API server keeps the Events of a cluster-scoped object in
`default` (events.k8s.io/v1 accepts `default` or `kube-system` for them); the operator posts
its Farm Events there too (operator/vipfarm_operator/kube.py), so `kubectl events --for
farm/NAME -n default` shows both.

Which transitions become Events (a Farm's `checks` entry and the log line get every one):
- a checker entering `failing` (from `passing`, or from `unknown` at start): Warning CheckerFailing;
- a checker `failing` -> `passing`: Normal CheckerPassing. The first pass after a start
  (`unknown` -> `passing`) is not news and posts nothing;
- recovery started: Normal RecoveryStarted; finished: Normal RecoverySucceeded or Warning
  RecoveryFailed; the restart budget used up: Warning RecoveryBudgetExhausted.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Hashable

from .checks import (CHECKER_TRANSITION, FAILING, PASSING, RECOVERY_BUDGET_EXHAUSTED_EVENT, RECOVERY_FINISHED,
                     RECOVERY_STARTED, Event)
from .spec import API_VERSION

EVENTS_NAMESPACE = "default"         # where the Events of a cluster-scoped Farm live
AGENT_CONTROLLER = "vipfarm.io/agent"
NOTE_LIMIT = 1024                    # events.k8s.io/v1 rejects a longer note
MIN_INTERVAL = 30.0                  # seconds between two Events of one (farm, checker, reason)


@dataclass(frozen=True)
class FarmEvent:
    """One Event to post about a Farm, before it has a body."""
    farm: str
    reason: str
    type: str          # Normal | Warning
    action: str        # Check | Recover
    note: str
    checker: str = ""   # the checker it is about (recovery Events: the failing one that caused it)
    farm_uid: str = ""  # the Farm's metadata.uid, when known (regarding.uid)

    def key(self) -> Hashable:
        """What the rate limit counts by."""
        return (self.farm, self.checker, self.reason)


def checks_event(e: Event, node: str, farm_uid: str = "") -> FarmEvent | None:
    """The Event for one vipfarm.checks transition on `node`; None for one that posts nothing."""
    if e.kind == CHECKER_TRANSITION:
        if e.to_state == FAILING:
            reason, type_ = "CheckerFailing", "Warning"
        elif e.to_state == PASSING and e.from_state == FAILING:
            reason, type_ = "CheckerPassing", "Normal"
        else:
            return None
        note = (f"node {node}: checker {e.checker} ({e.type}) {e.from_state} -> {e.to_state}: {e.detail}")
        return FarmEvent(e.farm, reason, type_, "Check", note, e.checker, farm_uid)
    if e.kind == RECOVERY_STARTED:
        reason, type_, what = "RecoveryStarted", "Normal", "recovery started"
    elif e.kind == RECOVERY_FINISHED:
        ok = e.to_state == "succeeded"
        reason, type_ = ("RecoverySucceeded", "Normal") if ok else ("RecoveryFailed", "Warning")
        what = f"recovery {e.to_state}"
    elif e.kind == RECOVERY_BUDGET_EXHAUSTED_EVENT:
        reason, type_, what = "RecoveryBudgetExhausted", "Warning", "recovery budget exhausted"
    else:
        return None
    return FarmEvent(e.farm, reason, type_, "Recover", f"node {node}: {what} (checker {e.checker}): {e.detail}",
                     e.checker, farm_uid)


def micro_time(moment: datetime.datetime) -> str:
    """A metav1.MicroTime: RFC 3339 UTC with exactly six fractional digits (the API server's parser needs them)."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_name(farm: str, node: str, moment: datetime.datetime) -> str:
    """A name that is a DNS-1123 subdomain, unique per node and microsecond, and the same on
    each retry of one post (so a retried create that had succeeded answers 409, not a duplicate)."""
    stamp = int(moment.timestamp() * 1_000_000)
    base = f"{farm}.{node}"
    if len(base) > 236:
        base = base[:236].rstrip(".-")
    return f"{base}.{stamp:x}"


def event_body(ev: FarmEvent, node: str, first: datetime.datetime,
               count: int = 1, last: datetime.datetime | None = None) -> dict:
    """The events.k8s.io/v1 Event: regarding the Farm, reported by this node's agent.
    count > 1: it stands for that many occurrences from `first` to `last` (series)."""
    regarding = {"apiVersion": API_VERSION, "kind": "Farm", "name": ev.farm}
    if ev.farm_uid:
        regarding["uid"] = ev.farm_uid
    last = last or first
    note = ev.note if count < 2 else f"{ev.note} ({count} times since {micro_time(first)[:19]}Z)"
    body = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": event_name(ev.farm, node, last), "namespace": EVENTS_NAMESPACE,
                         "labels": {"vipfarm.io/farm": ev.farm[:63].rstrip(".-_"),
                                    "vipfarm.io/node": node[:63].rstrip(".-_")}},
            "eventTime": micro_time(last), "type": ev.type, "reason": ev.reason, "action": ev.action,
            "note": note[:NOTE_LIMIT], "regarding": regarding,
            "reportingController": AGENT_CONTROLLER, "reportingInstance": node[:128]}
    if count >= 2:
        body["series"] = {"count": count, "lastObservedTime": micro_time(last)}
    return body


# -- the rate limit --------------------------------------------------------------------------
# Aggregation by a per-(farm, checker, reason) minimum interval, not by patching series onto a
# posted Event: the agent needs only `create` (no `patch`), and a flapping checker costs the API
# server at most one Event per reason per MIN_INTERVAL. An Event that comes too soon is held,
# not dropped: the newest held one is posted when the interval has passed, counting the
# occurrences it stands for, so the last Event of each kind always tells the latest state.

@dataclass
class _Held:
    ev: FarmEvent
    first: datetime.datetime
    last: datetime.datetime
    count: int


@dataclass(frozen=True)
class Due:
    """An Event the limiter lets out now: post it with event_body(ev, node, first, count, last)."""
    ev: FarmEvent
    first: datetime.datetime
    last: datetime.datetime
    count: int = 1


@dataclass
class EventLimiter:
    """At most one Event per key per `interval` seconds, on an injected monotonic clock."""
    interval: float = MIN_INTERVAL
    _sent: dict = field(default_factory=dict)     # key -> monotonic time of the last Event let out
    _held: dict = field(default_factory=dict)     # key -> _Held

    def offer(self, ev: FarmEvent, now: float, at: datetime.datetime) -> list[Due]:
        """An occurrence at monotonic `now` (wall clock `at`): the Events to post now."""
        key = ev.key()
        held = self._held.get(key)
        if held is not None:
            self._held[key] = _Held(ev, held.first, at, held.count + 1)
            return self.due(now)
        last = self._sent.get(key)
        if last is None or now - last >= self.interval:
            self._sent[key] = now
            return self.due(now) + [Due(ev, at, at)]
        self._held[key] = _Held(ev, at, at, 1)
        return self.due(now)

    def due(self, now: float) -> list[Due]:
        """The held Events whose interval has passed."""
        out = []
        for key in [k for k in self._held if now - self._sent[k] >= self.interval]:
            h = self._held.pop(key)
            self._sent[key] = now
            out.append(Due(h.ev, h.first, h.last, h.count))
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until a held Event is due; None when nothing is held."""
        if not self._held:
            return None
        return max(0.0, min(self._sent[k] + self.interval for k in self._held) - now)

    def held(self) -> int:
        return len(self._held)
