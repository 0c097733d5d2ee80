"""The operator's decisions, as pure functions: from a Farm, its Nodes, the other Farms, the
agents' reports and the current status, the status to write and the Events that explain it.
No I/O here; operator/vipfarm_operator adapts it to Kopf.

A member is *eligible* (vipfarm.membership: selected, Ready, not cordoned or drained; and
its agent reported ready, in a report younger than the staleness threshold) or not, with a
reason. Which eligible members are *live* (get buckets) is the agents' word, from their
heartbeats (`liveness`): when a strict majority of the eligible members report the same
agreed view V, live = eligible members in V (less those V lists as withdrawn); without such a
majority the previous serving set stays (less the members no longer eligible), so a
disagreement never makes buckets flap; while nobody serves yet (no assignment, or one dealt
before any agent reported), or when no eligible agent reports a membership at all (agents
without heartbeats), live = eligible.

The assignment is assign(previous, members live iff in live), which is exactly what every
agent computes with vipfarm.agreement.effective_assignment(previous, eligible weights, V):
so when the operator writes it after a failover, no bucket moves a second time
(tests/unit/test_decisions.py proves the equality over random views and weights). The
assignment changes only as much as balance requires (vipfarm.assignment), and its epoch
increases by one each time it changes. A Farm in VIP conflict (vipfarm.conflicts) gets an
empty assignment. An unreadable stored assignment is never replaced on a guess: the status
says so and nothing moves until it is repaired.

status.members[] per member: node, ready (serving: eligible and live), eligible (written only
when it differs from ready, i.e. eligible but not serving; absent means eligible == ready),
buckets, weight (absent means 1), address (the heartbeat address its agent reported), reason
(when not serving), and the agent's dataplaneMode, lastError and checks. The agents read
eligible, weight and address to configure their heartbeats (nodeagent/cluster.py).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .assignment import Assignment, Member, assign, moved
from .conflicts import FarmRef, claimed_elsewhere
from .farm_status import CorruptAssignment, assignment_status, repair_hint, stored_assignment, stored_epoch
from .membership import NodeInfo, selects
from .reports import AgentReport, agent_report, parse_time
from .spec import Farm


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: str = "Normal"


@dataclass
class Decision:
    status: dict[str, Any]
    events: list[Event]
    assignment: Assignment | None
    recheck_in: float | None = None     # seconds until a fresh report turns stale (decide again then)


STALE_AFTER = 180.0     # seconds: 3 x the agent's default refresh (60 s); VIPFARM_REPORT_STALE_AFTER


@dataclass(frozen=True)
class Liveness:
    """Which eligible members serve, and on what basis."""
    live: frozenset[str]
    basis: str                          # agreed | first | unreported | kept
    view: frozenset[str] | None = None  # the majority's agreed view (basis agreed)


def liveness(eligible: Iterable[str], reports: Mapping[str, AgentReport | None],
             previous_serving: Iterable[str] | None) -> Liveness:
    """The live members, from the eligible members' heartbeat memberships.

    previous_serving: the members the stored status says serve; None while nobody serves yet."""
    eligible = frozenset(eligible)
    groups: dict[tuple, int] = {}
    reporting = 0
    for name in eligible:
        r = reports.get(name)
        m = r.membership if r is not None else None
        if m is None:
            continue
        reporting += 1
        if m.agreed:
            key = (m.digest, m.view, m.withdrawn)
            groups[key] = groups.get(key, 0) + 1
    for (digest, view, withdrawn), n in sorted(groups.items(), key=lambda kv: -kv[1]):
        if 2 * n > len(eligible):
            return Liveness(frozenset((eligible & view) - withdrawn), "agreed", view)
        break
    if previous_serving is None:
        return Liveness(eligible, "first")
    if reporting == 0:
        return Liveness(eligible, "unreported")
    return Liveness(eligible & frozenset(previous_serving), "kept")


def report_age(report: AgentReport | None, now: datetime.datetime | None,
               counted_from: datetime.datetime | None) -> float | None:
    """Seconds a report has been stale-counting: since its reportedAt, or since `counted_from`
    (when the operator last regained the API server) if that is later. None: unknown."""
    if report is None or report.reported_at is None or now is None:
        return None
    start = report.reported_at if counted_from is None else max(report.reported_at, counted_from)
    return (now - start).total_seconds()


def _condition(ctype: str, ok: bool, reason: str, message: str, generation: int,
               previous: list[Mapping[str, Any]], now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else now
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def _member_reason(node: NodeInfo, report: AgentReport | None, stale: bool = False) -> str:
    if not node.ready:
        return "NodeNotReady"
    if node.unschedulable or node.draining:
        # Its agent still serves its established flows (handover) until they end: Draining
        # while it reports some left, then Drained (a cordon says Cordoned once done).
        if report is not None and report.flows_left:
            return "Draining"
        return "Drained" if node.draining else "Cordoned"
    if report is None:
        return "AgentMissing"
    if stale:
        return "AgentStale"
    if not report.ready:
        return f"AgentNotReady: {report.reason}" if report.reason else "AgentNotReady"
    return "Ready"


def decide(farm: Farm, generation: int, created: str, nodes: list[NodeInfo], others: list[FarmRef],
           status: Mapping[str, Any] | None, reports: Mapping[str, Mapping[str, Any]], now: str,
           stale_after: float = STALE_AFTER, stale_counted_from: str | None = None) -> Decision:
    """The status a Farm should have, and the events that explain the change.

    reports: node name -> that node's agent report for this Farm (FarmNode status.farms.<farm>,
    with the FarmNode's reportedAt added as `reportedAt`). A report older than stale_after
    seconds makes its member ineligible (AgentStale); ages count from stale_counted_from when
    that is later (the operator passes when it last regained the API server: reports that
    could not be written meanwhile are not the agents' fault). A report without reportedAt,
    or a `now` that is not a time, is never stale.
    """
    status = dict(status or {})
    prev_conditions = list(status.get("conditions") or [])
    try:
        prev = stored_assignment(status)
    except CorruptAssignment as e:
        return _unreadable_assignment(farm.name, status, str(e), generation, prev_conditions, now)
    epoch = stored_epoch(status)
    events: list[Event] = []
    vips = tuple(str(v) for v in farm.virtual_ips)

    candidates = sorted((n for n in nodes if selects(farm.node_selector, n.labels)), key=lambda n: n.name)
    for n in candidates:
        if n.weight_problem:
            events.append(Event("InvalidWeight", n.weight_problem, "Warning"))
    claims = claimed_elsewhere(FarmRef(farm.name, created, frozenset(farm.virtual_ips)), others)

    parsed = {n.name: agent_report(reports.get(n.name)) for n in candidates}
    now_t, floor = parse_time(now), parse_time(stale_counted_from)
    ages = {n.name: report_age(parsed[n.name], now_t, floor) for n in candidates}
    stale = {name for name, age in ages.items() if age is not None and age > stale_after}
    reasons = {n.name: _member_reason(n, parsed[n.name], n.name in stale) for n in candidates}
    eligible = {n.name for n in candidates if reasons[n.name] == "Ready"} if not claims else set()
    prev_live = {m.get("node") for m in status.get("members") or [] if m.get("ready")}
    # Nobody serving yet (no assignment, or one dealt before any agent reported): nothing can
    # flap, so the bootstrap rule applies (live = eligible) until a majority agrees on a view.
    alive = liveness(eligible, parsed, prev_live if prev is not None and prev_live else None)
    live = set(alive.live)
    for name in eligible - live:
        r = parsed[name]
        if alive.view is not None and name in alive.view:
            reasons[name] = "Withdrawn"          # in the view, its checkers fail
        elif alive.view is not None:
            reasons[name] = "HeartbeatLost"      # the agreed view of a majority leaves it out
        else:
            reasons[name] = "AwaitingAgreement"  # no majority agrees on a view that has it yet
    members = [Member(n.name, n.weight, n.name in live) for n in candidates]
    fresh_ages = [age for name, age in ages.items() if name in eligible and age is not None]
    recheck_in = max(0.0, stale_after - max(fresh_ages)) + 1.0 if fresh_ages else None

    new = assign(prev, members, farm.buckets)
    changed = prev is None or prev.owner_names() != new.owner_names() or prev.members != new.members
    rebalance = ""
    if changed and (prev is not None or any(m.live for m in members)):
        epoch += 1
        counts = new.counts()
        rebalance = (f"assignment epoch {epoch}: {moved(prev, new)} of {farm.buckets} buckets moved; "
                     + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    # One event per change (the API server pays for each): a membership change carries the
    # rebalance it caused; a rebalance alone (e.g. a weight change) gets its own reason.
    if prev_live != live:
        joined, left = sorted(live - prev_live), sorted(prev_live - live)
        parts = ([f"joined: {', '.join(joined)}"] if joined else []) + ([f"left: {', '.join(left)}"] if left else [])
        message = "; ".join(parts) + f" ({len(live)} serving)" + (f"; {rebalance}" if rebalance else "")
        events.append(Event("MembershipChanged", message))
    elif rebalance:
        events.append(Event("Rebalanced", rebalance))

    counts = new.counts()
    member_status = []
    for n in candidates:
        r = parsed[n.name]
        # Fields at their usual value are left out (no reason when ready, no weight when 1,
        # no empty error): a Farm's status is rewritten on every change, and its size is what
        # the API server pays for (bench/RESULTS.md, control plane).
        entry: dict[str, Any] = {"node": n.name, "ready": n.name in live, "buckets": counts.get(n.name, 0)}
        if not entry["ready"]:
            entry["reason"] = "Conflict" if claims else reasons[n.name]
            if n.name in eligible:
                entry["eligible"] = True
        if n.weight != 1:
            entry["weight"] = n.weight
        if r and r.address:
            entry["address"] = r.address
        if r and r.dataplane_mode:
            entry["dataplaneMode"] = r.dataplane_mode
        if r and r.last_error:
            entry["lastError"] = r.last_error
        if r and r.checks:
            entry["checks"] = dict(r.checks)
        if r and r.flows_left:
            entry["flowsLeft"] = r.flows_left
        member_status.append(entry)

    ready_n, total = len(live), len(candidates)
    if claims:
        phase = "Conflict"
        msg = "virtual IP already claimed: " + ", ".join(claims) + "; no node serves this Farm"
        if not any(c.get("type") == "Conflict" and c.get("status") == "True" for c in prev_conditions):
            events.append(Event("Conflict", msg, "Warning"))
    elif total == 0:
        phase, msg = "Pending", f"no Node matches nodeSelector {dict(farm.node_selector)}"
    elif ready_n == 0:
        phase, msg = "Pending", "no member is ready yet"
    elif ready_n < total:
        phase, msg = "Degraded", f"{ready_n} of {total} members serving"
    else:
        phase, msg = "Ready", f"all {total} members serving"
    conditions = [
        _condition("Ready", phase in ("Ready", "Degraded"), phase, msg, generation, prev_conditions, now),
        _condition("Degraded", phase == "Degraded", "MembersNotReady" if phase == "Degraded" else "AllServing",
                   msg if phase == "Degraded" else "", generation, prev_conditions, now),
        _condition("Conflict", bool(claims), "VIPClaimed" if claims else "NoConflict",
                   msg if claims else "", generation, prev_conditions, now),
    ]
    new_status = {
        "observedGeneration": generation,
        "phase": phase,
        "epoch": epoch,
        "assignment": assignment_status(new, epoch),
        "members": member_status,
        "readyMembers": ready_n,
        "totalMembers": total,
        "readyText": f"{ready_n}/{total}",
        "vipText": ",".join(vips),
        "conditions": conditions,
    }
    return Decision(new_status, events, new, recheck_in)


def _unreadable_assignment(name: str, status: dict[str, Any], why: str, generation: int,
                           prev_conditions: list[Mapping[str, Any]], now: str) -> Decision:
    """Keep everything as it is (every node keeps its buckets) and say what to do."""
    msg = f"the stored assignment is unreadable ({why}); no bucket moves until it is repaired: {repair_hint(name)}"
    already = any(c.get("type") == "Degraded" and c.get("reason") == "AssignmentUnreadable" for c in prev_conditions)
    kept = [c for c in prev_conditions if c.get("type") != "Degraded"]
    new_status = dict(status, phase="Degraded", conditions=kept + [
        _condition("Degraded", True, "AssignmentUnreadable", msg, generation, prev_conditions, now)])
    events = [] if already else [Event("AssignmentUnreadable", msg, "Warning")]
    return Decision(new_status, events, None)
