"""The agents' reports, as one FarmNode per Node holds them (status.farms.<farm>).

The agent writes them (nodeagent/farmnode_report.py paces the writes); the operator reads only the
decision fields. appliedEpoch is left out of those on purpose: every agent bumps it after
every rebalance, and that must not make the operator decide again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

DECISION_FIELDS = ("ready", "reason", "dataplaneMode", "lastError", "released", "checks")


@dataclass(frozen=True)
class AgentReport:
    """One agent's report for one Farm, as decisions read it."""
    ready: bool = False
    reason: str = ""
    dataplane_mode: str = ""
    last_error: str = ""
    released: bool = False
    checks: Mapping[str, Any] = field(default_factory=dict)


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
        released=bool(raw.get("released")), checks=dict(raw.get("checks") or {}))
