"""One picture of each farm from what several agents say about it. Pure.

Every agent serves `GET /status` (README "Metrics and health endpoints"): its own view of
each farm it serves (members, the bucket owners under its agreed view, its events) and what
only it can know (its filter's counters, the buckets its filter holds, its checkers). The
status command and the console ask one or more agents and merge their answers here:

  * the farm-wide part (view, members, owners, base epoch) comes from the most authoritative
    answer: an agreed one before one that is not, then the newest base, then the largest
    view, then the node name (so the choice does not depend on the order of the answers);
  * each member gets the node-local part of its own agent's answer (`local`), or None when
    that agent was not asked or did not answer;
  * events are the union of every answer's, oldest first, one per (time, kind, nodes).

The cluster-mode equivalent, `farm_view_from_resource`, reads a Farm object (the operator's
merge: status.members, status.assignment) and the FarmNodes (each agent's report) instead.
Both give the same shape, FARM_VIEW_FIELDS, so the printers (vipfarm/status_printer.py) and
the console take either. What only one mode knows is None (or empty) in the other's views:
`phase` is the operator's (None from agents); packet counters, heartbeat ages
(`lastHeardMs`), failovers and events are the agents' (None / [] from the API, whose Farm
status keeps no history); a member's `reportedAt` (when its agent last wrote its FarmNode)
exists only in cluster views.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .farm_status import CorruptAssignment, stored_assignment, stored_epoch
from .reports import membership

SCHEMA_VERSION = 1
LOCAL_FIELDS = ("ownedBuckets", "counters", "heartbeats", "checks", "handover", "ready")
FARM_VIEW_FIELDS = ("name", "vips", "buckets", "phase", "view", "agreed", "baseEpoch", "members", "owners",
                    "lastFailover", "events", "reportedBy")
MEMBER_STATES = ("Serving", "Out", "Withdrawn", "Draining", "Drained")


class StatusFormatError(ValueError):
    """An agent's /status answer that is not schema version 1."""


def check_status(doc: Any, source: str) -> Mapping[str, Any]:
    """The answer, if it is a /status document this code reads; else StatusFormatError naming
    the source and what is wrong."""
    if not isinstance(doc, Mapping):
        raise StatusFormatError(f"{source}: /status is not a JSON object")
    version = doc.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise StatusFormatError(f"{source}: /status schemaVersion is {version!r}, this vipfarm reads "
                                f"{SCHEMA_VERSION}; use a vipfarm command of the agent's version")
    if not isinstance(doc.get("node"), str) or not isinstance(doc.get("farms"), list):
        raise StatusFormatError(f"{source}: /status lacks 'node' or 'farms'")
    for farm in doc["farms"]:
        if not isinstance(farm, Mapping) or not isinstance(farm.get("name"), str):
            raise StatusFormatError(f"{source}: /status has a farm entry without a name")
    return doc


def _authority(node: str, farm: Mapping[str, Any]) -> tuple:
    return (bool(farm.get("agreed")), int(farm.get("baseEpoch") or 0), len(farm.get("view") or ()), node)


def merge_agent_statuses(statuses: Iterable[Mapping[str, Any]], only_farm: str | None = None) -> list[dict]:
    """Farm views (FARM_VIEW_FIELDS), by farm name, from checked /status documents."""
    by_farm: dict[str, dict[str, Mapping[str, Any]]] = {}
    for doc in statuses:
        for farm in doc["farms"]:
            if only_farm is None or farm["name"] == only_farm:
                by_farm.setdefault(farm["name"], {})[doc["node"]] = farm
    views = []
    for name in sorted(by_farm):
        answers = by_farm[name]
        best_node = max(answers, key=lambda n: _authority(n, answers[n]))
        best = answers[best_node]
        members = []
        for m in best.get("members") or ():
            own = answers.get(m.get("name"))
            local = {k: own.get(k) for k in LOCAL_FIELDS if k in own} if own is not None else None
            members.append({**m, "local": local})
        views.append({
            "name": name,
            "vips": list(best.get("vips") or ()),
            "buckets": best.get("buckets"),
            "phase": None,
            "view": list(best.get("view") or ()),
            "agreed": bool(best.get("agreed")),
            "baseEpoch": best.get("baseEpoch"),
            "members": members,
            "owners": list(best.get("owners") or ()),
            "lastFailover": _latest_failover(answers.values()),
            "events": _merged_events(answers.values()),
            "reportedBy": best_node,
        })
    return views


def _latest_failover(farms: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    seen = [f["lastFailover"] for f in farms if f.get("lastFailover")]
    return max(seen, key=lambda e: str(e.get("at", ""))) if seen else None


def _merged_events(farms: Iterable[Mapping[str, Any]], keep: int = 50) -> list[Mapping[str, Any]]:
    out: dict[tuple, Mapping[str, Any]] = {}
    for f in farms:
        for e in f.get("events") or ():
            out.setdefault((str(e.get("at", "")), e.get("kind"), tuple(e.get("nodes") or ())), e)
    return [out[k] for k in sorted(out)][-keep:]


def owner_shares(view: Mapping[str, Any]) -> dict[str | None, int]:
    """Buckets per owner (None: no owner) in a farm view's bucket map."""
    shares: dict[str | None, int] = {}
    for owner in view.get("owners") or ():
        shares[owner] = shares.get(owner, 0) + 1
    return shares


def farm_view_from_resource(farm: Mapping[str, Any], farmnodes: Iterable[Mapping[str, Any]]) -> dict:
    """The farm view (FARM_VIEW_FIELDS) of one Farm object and the FarmNode objects, as the API
    server returns them (dicts).

    Members, their buckets, weights and reasons are the operator's (status.members); the
    bucket owners decode status.assignment (none when it is absent or unreadable: the phase
    and conditions then say why); each member's `local` part is its agent's FarmNode report
    for this Farm (None without one). The view is the agreed view most of the eligible
    members' agents report (`agreed` when they are a strict majority, the operator's rule in
    vipfarm/decisions.py); with no agent reporting one, the serving members."""
    meta, spec, status = (farm.get(k) or {} for k in ("metadata", "spec", "status"))
    name = meta.get("name")
    reports: dict[str, tuple[Mapping[str, Any] | None, str | None]] = {}
    for fn in farmnodes:
        fn_status = fn.get("status") or {}
        reports[(fn.get("metadata") or {}).get("name")] = ((fn_status.get("farms") or {}).get(name),
                                                           fn_status.get("reportedAt"))
    try:
        assignment = stored_assignment(status)
    except CorruptAssignment:
        assignment = None
    owners = assignment.owner_names() if assignment is not None else []

    members, votes, eligible = [], {}, 0
    for m in status.get("members") or ():
        node = m.get("node")
        report, reported_at = reports.get(node, (None, None))
        state = _member_state(m)
        flows_left = _count(m.get("flowsLeft")) or _count((report or {}).get("flowsLeft"))
        entry = {"name": node, "address": m.get("address") or (report or {}).get("address") or None,
                 "weight": m.get("weight", 1), "state": state,
                 "reason": "" if state == "Serving" else str(m.get("reason") or ""),
                 "buckets": int(m.get("buckets") or 0), "lastHeardMs": None, "handingOver": flows_left > 0,
                 "reportedAt": reported_at, "local": _local_from_report(report, flows_left)}
        for extra in ("dataplaneMode", "lastError"):
            if m.get(extra):
                entry[extra] = m[extra]
        members.append(entry)
        if m.get("ready") or m.get("eligible"):
            eligible += 1
            agreed_on = membership((report or {}).get("membership"))
            if agreed_on is not None and agreed_on.agreed:
                key = (agreed_on.view, agreed_on.base_epoch)
                votes[key] = votes.get(key, 0) + 1
    if votes:
        (view, _), n = max(votes.items(), key=lambda kv: (kv[1], kv[0][1], len(kv[0][0]), sorted(kv[0][0])))
        agreed = 2 * n > eligible
    else:
        view, agreed = frozenset(m["name"] for m in members if m["state"] == "Serving"), False
    return {
        "name": name,
        "vips": list(spec.get("virtualIPs") or ()),
        "buckets": spec.get("buckets", len(owners) or None),
        "phase": status.get("phase"),
        "view": sorted(view),
        "agreed": agreed,
        "baseEpoch": stored_epoch(status),
        "members": members,
        "owners": owners,
        "lastFailover": None,
        "events": [],
        "reportedBy": None,
    }


def _member_state(m: Mapping[str, Any]) -> str:
    """A status.members entry's state in the agents' words (MEMBER_STATES)."""
    if m.get("ready"):
        return "Serving"
    reason = str(m.get("reason") or "")
    if reason == "Draining":
        return "Draining"
    if reason in ("Drained", "Cordoned"):
        return "Drained"
    return "Withdrawn" if reason == "Withdrawn" else "Out"


def _local_from_report(report: Mapping[str, Any] | None, flows_left: int) -> dict | None:
    """What a FarmNode report says about its own node, in /status's words (LOCAL_FIELDS)."""
    if not report:
        return None
    checks = []
    for key, c in sorted((report.get("checks") or {}).items()):
        c = c if isinstance(c, Mapping) else {}
        if c.get("type") == "recovery":
            continue
        checks.append({"name": c.get("name") or key, "state": str(c.get("state") or "").capitalize() or None,
                       "lastRun": None, "since": c.get("since")})
    return {"ready": bool(report.get("ready")), "checks": checks,
            "handover": {"active": flows_left > 0, "flowsLeft": flows_left}}


def _count(raw: Any) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 0
