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

The cluster-mode equivalent reads the Farm status instead (the operator's merge); both give
the same shape, FARM_VIEW_FIELDS, so the printers and the console take either.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

SCHEMA_VERSION = 1
LOCAL_FIELDS = ("ownedBuckets", "counters", "heartbeats", "checks", "handover", "ready")
FARM_VIEW_FIELDS = ("name", "vips", "buckets", "view", "agreed", "baseEpoch", "members", "owners",
                    "lastFailover", "events", "reportedBy")


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
