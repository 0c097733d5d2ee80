"""The operator's decisions, as pure functions: which nodes serve a Farm, the new assignment,
the status to write and the events to emit. No I/O here; operator/ adapts it to Kopf.

Membership, per node matching spec.nodeSelector:
  * the Node must be Ready, not cordoned (spec.unschedulable) and not annotated
    vipfarm.io/drain=true: otherwise it is a member that is not ready;
  * its agent must have reported ready for this Farm in FarmNode <node> (status.farms.<farm>);
  * its weight comes from the annotation (or label) vipfarm.io/weight, default 1.
A live member gets buckets; the assignment changes only as much as balance requires
(vipfarm.assignment), and its epoch increases by one each time it changes.
Two Farms claiming one VIP: the later one (by creation time, then name) gets Conflict and
an empty assignment, so no node serves it.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Mapping

from .assignment import Assignment, Member, assign, moved
from .spec import Farm

WEIGHT_KEY = "vipfarm.io/weight"
DRAIN_KEY = "vipfarm.io/drain"
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    unschedulable: bool = False
    draining: bool = False
    weight: int = 1
    weight_problem: str = ""


@dataclass(frozen=True)
class AgentReport:
    ready: bool = False
    reason: str = ""
    dataplane_mode: str = ""
    last_error: str = ""
    applied_epoch: int = -1
    released: bool = False
    checks: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FarmRef:
    """Another Farm, as far as conflict detection needs it."""
    name: str
    created: str          # RFC 3339 creationTimestamp; sorts chronologically
    vips: tuple[str, ...]
    deleting: bool = False


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


def utc_now() -> str:
    """RFC 3339 UTC with a Z, as status timestamps need (the CRD rejects a naive time)."""
    return (datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            .isoformat().replace("+00:00", "Z"))


def farm_ref(body: Mapping[str, Any]) -> "FarmRef":
    """A Farm object (as the API returns it), reduced to what conflict detection reads."""
    md = body.get("metadata") or {}
    return FarmRef(md.get("name", ""), md.get("creationTimestamp", ""),
                   tuple((body.get("spec") or {}).get("virtualIPs") or ()),
                   deleting=bool(md.get("deletionTimestamp")))


def node_info(name: str, labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None,
              conditions: list[Mapping[str, Any]] | None, unschedulable: bool | None) -> NodeInfo:
    """A Node object's fields, reduced to what membership needs."""
    labels = dict(labels or {})
    annotations = dict(annotations or {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in (conditions or []))
    raw = annotations.get(WEIGHT_KEY, labels.get(WEIGHT_KEY))
    weight, problem = 1, ""
    if raw is not None:
        try:
            weight = int(raw)
            if not 0 <= weight <= MAX_WEIGHT:
                raise ValueError
        except ValueError:
            weight = 1
            problem = (f"Node {name} {WEIGHT_KEY}={raw!r} is not an integer between 0 and {MAX_WEIGHT}; "
                       f"using weight 1 (fix: kubectl annotate node {name} {WEIGHT_KEY}=2 --overwrite)")
    draining = str(annotations.get(DRAIN_KEY, "")).lower() in ("true", "1", "yes")
    return NodeInfo(name, labels, ready, bool(unschedulable), draining, weight, problem)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# The fields of an agent's report that decisions read. appliedEpoch is left out on purpose:
# every agent bumps it after every rebalance, and that must not make the operator re-decide.
DECISION_FIELDS = ("ready", "reason", "dataplaneMode", "lastError", "released", "checks")


def decision_view(farms: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """A FarmNode's status.farms, reduced to what decisions read (farm -> report)."""
    return {f: {k: r[k] for k in DECISION_FIELDS if k in r} for f, r in (farms or {}).items() if r}


def farms_changed(old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The Farms whose decision view differs between two views of one FarmNode."""
    return {f for f in set(old) | set(new) if old.get(f) != new.get(f)}


def agent_report(raw: Mapping[str, Any] | None) -> AgentReport | None:
    if not raw:
        return None
    return AgentReport(
        ready=bool(raw.get("ready")), reason=str(raw.get("reason", "")),
        dataplane_mode=str(raw.get("dataplaneMode", "")), last_error=str(raw.get("lastError", "")),
        applied_epoch=int(raw.get("appliedEpoch", -1)), released=bool(raw.get("released")),
        checks=dict(raw.get("checks") or {}))


def previous_assignment(status: Mapping[str, Any] | None) -> tuple[Assignment | None, int]:
    """The assignment and epoch stored in a Farm status (None, 0 when absent or unreadable)."""
    a = (status or {}).get("assignment") or {}
    try:
        if a.get("data"):
            return Assignment.decode(a.get("members") or [], a["data"]), int(a.get("epoch", 0))
    except (ValueError, TypeError):
        pass
    return None, int(a.get("epoch", 0) or 0)


def conflicting_claims(farm_name: str, created: str, vips: tuple[str, ...], others: list[FarmRef]) -> list[str]:
    """VIPs of this farm already claimed by an earlier Farm: 'VIP (Farm other)'."""
    mine = (created, farm_name)
    out = []
    for o in others:
        if o.name == farm_name or o.deleting:
            continue
        if (o.created, o.name) < mine:
            for v in vips:
                if v in o.vips:
                    out.append(f"{v} (Farm {o.name})")
    return sorted(out)


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
    events: list[Event] = []
    prev, epoch = previous_assignment(status)
    prev_conditions = list(status.get("conditions") or [])
    vips = tuple(str(v) for v in farm.virtual_ips)

    candidates = sorted((n for n in nodes if selects(farm.node_selector, n.labels)), key=lambda n: n.name)
    for n in candidates:
        if n.weight_problem:
            events.append(Event("InvalidWeight", n.weight_problem, "Warning"))
    claims = conflicting_claims(farm.name, created, vips, others)

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
        "assignment": {"encoding": "z1", "members": list(new.members), "data": new.encode(), "epoch": epoch},
        "members": member_status,
        "readyMembers": ready_n,
        "totalMembers": total,
        "readyText": f"{ready_n}/{total}",
        "vipText": ",".join(vips),
        "conditions": conditions,
    }
    return Decision(new_status, events, new)


def owned_by(status: Mapping[str, Any] | None, node: str) -> tuple[frozenset[int], int, bool]:
    """What an agent applies: (its buckets, the epoch, whether the Farm may be served)."""
    status = status or {}
    if status.get("phase") == "Conflict":
        return frozenset(), int(status.get("epoch", 0) or 0), False
    a, epoch = previous_assignment(status)
    if a is None:
        return frozenset(), epoch, True
    return frozenset(a.owned_by(node)), epoch, True
