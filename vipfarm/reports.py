"""The agents' reports, as one FarmNode per Node holds them (status.farms.<farm>).

The agent writes them (nodeagent/farmnode_report.py paces the writes); the operator reads only the
decision fields. appliedEpoch is left out of those on purpose: every agent bumps it after
every rebalance, and that must not make the operator decide again. The FarmNode's reportedAt
is not a decision field either (it changes on every refresh): the operator keeps it apart and
adds it to each report when it decides (`REPORTED_AT`), for staleness.

`membership` is the agent's latest heartbeat decision for the Farm (nodeagent/heartbeat.py):
the base epoch it computed on, the agreed view, the agreement digest (hex) and whether every
member of the view advertised that digest; `withdrawn` lists the members of the view whose
checkers fail (absent when none). The operator's liveness rule reads it (vipfarm/decisions.py).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Mapping

DECISION_FIELDS = ("ready", "reason", "dataplaneMode", "lastError", "released", "checks", "address", "membership",
                   "flowsLeft")
REPORTED_AT = "reportedAt"     # added by the operator from the FarmNode's status.reportedAt


@dataclass(frozen=True)
class Membership:
    """What one agent's heartbeats agreed on for one Farm."""
    base_epoch: int
    view: frozenset[str]
    digest: str
    agreed: bool
    withdrawn: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AgentReport:
    """One agent's report for one Farm, as decisions read it."""
    ready: bool = False
    reason: str = ""
    dataplane_mode: str = ""
    last_error: str = ""
    released: bool = False
    checks: Mapping[str, Any] = field(default_factory=dict)
    address: str = ""
    membership: Membership | None = None
    reported_at: datetime.datetime | None = None
    flows_left: int = 0      # flows it still serves in buckets it gave up (a drain or handover)


def decision_view(farms: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """A FarmNode's status.farms, reduced to what decisions read (farm -> report)."""
    return {f: {k: r[k] for k in DECISION_FIELDS if k in r} for f, r in (farms or {}).items() if r}


def farms_changed(old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The Farms whose decision view differs between two views of one FarmNode."""
    return {f for f in set(old) | set(new) if old.get(f) != new.get(f)}


def parse_time(raw: Any) -> datetime.datetime | None:
    """An RFC 3339 time as the API server stores it; None when absent or unreadable."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        t = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.timezone.utc)


def membership(raw: Any) -> Membership | None:
    """A report's membership; None when absent or malformed (a malformed one counts for nothing)."""
    if not isinstance(raw, Mapping):
        return None
    view, withdrawn = raw.get("view"), raw.get("withdrawn") or []
    epoch = raw.get("baseEpoch", 0)
    if not isinstance(view, list) or not all(isinstance(v, str) for v in view) \
            or not isinstance(withdrawn, list) or not all(isinstance(v, str) for v in withdrawn) \
            or not isinstance(epoch, int) or isinstance(epoch, bool):
        return None
    return Membership(epoch, frozenset(view), str(raw.get("digest", "")), raw.get("agreed") is True,
                      frozenset(withdrawn))


def membership_report(base_epoch: int, view, digest: bytes, agreed: bool, withdrawn=()) -> dict[str, Any]:
    """The membership entry an agent writes (the inverse of `membership`)."""
    out: dict[str, Any] = {"baseEpoch": int(base_epoch), "view": sorted(view), "digest": digest.hex(),
                           "agreed": bool(agreed)}
    if withdrawn:
        out["withdrawn"] = sorted(withdrawn)
    return out


def agent_report(raw: Mapping[str, Any] | None) -> AgentReport | None:
    if not raw:
        return None
    return AgentReport(
        ready=bool(raw.get("ready")), reason=str(raw.get("reason", "")),
        dataplane_mode=str(raw.get("dataplaneMode", "")), last_error=str(raw.get("lastError", "")),
        released=bool(raw.get("released")), checks=dict(raw.get("checks") or {}),
        address=str(raw.get("address", "") or ""), membership=membership(raw.get("membership")),
        reported_at=parse_time(raw.get(REPORTED_AT)), flows_left=_count(raw.get("flowsLeft")))


def _count(raw: Any) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 0
