"""The operator's decisions, as pure functions: from a Farm, its Nodes, the other Farms, the
agents' reports and the current status, the status to write and the Events that explain it.
No I/O here; operator/vipfarm_operator adapts it to Kopf.

A live member (vipfarm.membership: selected, Ready, not cordoned or drained; and its agent
reported ready) gets buckets; the assignment changes only as much as balance requires
(vipfarm.assignment), and its epoch increases by one each time it changes. A Farm in VIP
conflict (vipfarm.conflicts) gets an empty assignment. An unreadable stored assignment is
never replaced on a guess: the status says so and nothing moves until it is repaired.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .assignment import Assignment, Member, assign, moved
from .conflicts import FarmRef, claimed_elsewhere
from .farm_status import CorruptAssignment, assignment_status, repair_hint, stored_assignment, stored_epoch
from .membership import NodeInfo, selects
from .reports import AgentReport, agent_report
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


def _condition(ctype: str, ok: bool, reason: str, message: str, generation: int,
               previous: list[Mapping[str, Any]], now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else now
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def _member_reason(node: NodeInfo, report: AgentReport | None) -> str:
    if not node.ready:
        return "NodeNotReady"
    if node.unschedulable:
        return "Cordoned"
    if node.draining:
        return "Draining"
    if report is None:
        return "AgentMissing"
    if not report.ready:
        return f"AgentNotReady: {report.reason}" if report.reason else "AgentNotReady"
    return "Ready"


def decide(farm: Farm, generation: int, created: str, nodes: list[NodeInfo], others: list[FarmRef],
           status: Mapping[str, Any] | None, reports: Mapping[str, Mapping[str, Any]], now: str) -> Decision:
    """The status a Farm should have, and the events that explain the change.

    reports: node name -> that node's agent report for this Farm (FarmNode status.farms.<farm>).
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
    reasons = {n.name: _member_reason(n, parsed[n.name]) for n in candidates}
    live = {n.name for n in candidates if reasons[n.name] == "Ready"} if not claims else set()
    members = [Member(n.name, n.weight, n.name in live) for n in candidates]

    new = assign(prev, members, farm.buckets)
    changed = prev is None or prev.owner_names() != new.owner_names() or prev.members != new.members
    rebalance = ""
    if changed and (prev is not None or any(m.live for m in members)):
        epoch += 1
        counts = new.counts()
        rebalance = (f"assignment epoch {epoch}: {moved(prev, new)} of {farm.buckets} buckets moved; "
                     + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    prev_live = {m.get("node") for m in status.get("members") or [] if m.get("ready")}
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
        if n.weight != 1:
            entry["weight"] = n.weight
        if r and r.dataplane_mode:
            entry["dataplaneMode"] = r.dataplane_mode
        if r and r.last_error:
            entry["lastError"] = r.last_error
        if r and r.checks:
            entry["checks"] = dict(r.checks)
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
    return Decision(new_status, events, new)


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
