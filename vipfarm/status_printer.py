"""`vipfarm status` output, kubectl-style, from farm views (vipfarm/status_view.py). Pure:
views and the current time in, text out, so either mode's views print the same way.

  table (default)  per farm a header line, then one row per member:
                   NAME STATE REASON WEIGHT BUCKETS PACKETS LAST-HEARD
  wide             the same plus ADDRESS DROPPED HANDOVER CHECKS
  json / yaml      the views themselves: a list, or one object when a FARM was named
                   (as `kubectl get farms -o json` / `kubectl get farm web -o json`)

A value this mode does not know prints "-" (kubectl prints <none>; "-" keeps columns short).
"""
from __future__ import annotations

import datetime
import json
from typing import Any, Iterable, Mapping

import yaml

from .reports import parse_time

OUTPUTS = ("table", "wide", "json", "yaml")
COLUMNS = ("NAME", "STATE", "REASON", "WEIGHT", "BUCKETS", "PACKETS", "LAST-HEARD")
WIDE_COLUMNS = COLUMNS + ("ADDRESS", "DROPPED", "HANDOVER", "CHECKS")
NONE = "-"


def render(views: list[Mapping[str, Any]], output: str, now: datetime.datetime, *, single: bool = False) -> str:
    """The whole output for `-o output` (table when "table"); `single`: one FARM was named."""
    if output in ("json", "yaml"):
        data: Any = views[0] if single and len(views) == 1 else list(views)
        if output == "json":
            return json.dumps(data, indent=2) + "\n"
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return "\n".join(farm_table(v, now, wide=output == "wide") for v in views)


def farm_table(view: Mapping[str, Any], now: datetime.datetime, *, wide: bool = False) -> str:
    """One farm: its header line, then its members' table."""
    rows = [WIDE_COLUMNS if wide else COLUMNS]
    for m in view.get("members") or ():
        rows.append(member_row(view, m, now, wide=wide))
    return header_line(view, now) + "\n" + _columns(rows)


def header_line(view: Mapping[str, Any], now: datetime.datetime) -> str:
    """e.g. `Farm web: VIPs 203.0.113.10, 2001:db8::10; phase Ready; view 3/3 agreed, epoch 3
    (as n1 sees it); last failover 2m ago: n3 lost, 412 ms`."""
    parts = [f"VIPs {', '.join(view.get('vips') or ()) or NONE}"]
    if view.get("phase"):
        parts.append(f"phase {view['phase']}")
    members = view.get("members") or ()
    seen = f" (as {view['reportedBy']} sees it)" if view.get("reportedBy") else ""
    parts.append(f"view {len(view.get('view') or ())}/{len(members)} {'agreed' if view.get('agreed') else 'not agreed'}"
                 f", epoch {view.get('baseEpoch') or 0}{seen}")
    parts.append(failover_text(view.get("lastFailover"), now))
    return f"Farm {view.get('name')}: " + "; ".join(parts)


def failover_text(failover: Mapping[str, Any] | None, now: datetime.datetime) -> str:
    if not failover:
        return "no failover seen"
    at = parse_time(failover.get("at"))
    when = f" {human_age((now - at).total_seconds() * 1000)} ago" if at is not None else ""
    lost = ", ".join(failover.get("lost") or ()) or "?"
    took = failover.get("durationMs")
    return f"last failover{when}: {lost} lost" + (f", {took} ms" if took is not None else "")


def member_row(view: Mapping[str, Any], m: Mapping[str, Any], now: datetime.datetime, *,
               wide: bool = False) -> tuple[str, ...]:
    local = m.get("local") or {}
    counters = local.get("counters") or {}
    total = view.get("buckets") or 0
    buckets = int(m.get("buckets") or 0)
    share = f" ({round(100 * buckets / total)}%)" if total else ""
    row = (str(m.get("name")), str(m.get("state") or NONE), str(m.get("reason") or NONE), str(m.get("weight", 1)),
           f"{buckets}{share}", _number(counters.get("accepted")), last_heard(view, m, now))
    if not wide:
        return row
    handover = local.get("handover") or {}
    checks = ",".join(f"{c.get('name')}={c.get('state') or '?'}" for c in local.get("checks") or ()) or NONE
    return row + (str(m.get("address") or NONE), _number(counters.get("dropped")), _number(handover.get("flowsLeft")),
                  checks)


def last_heard(view: Mapping[str, Any], m: Mapping[str, Any], now: datetime.datetime) -> str:
    """Standalone: how long ago the answering agent accepted a heartbeat from the member
    (`self` for itself); cluster: how long ago the member's agent wrote its FarmNode."""
    if m.get("lastHeardMs") is not None:
        return human_age(m["lastHeardMs"])
    reported = parse_time(m.get("reportedAt"))
    if reported is not None:
        return human_age((now - reported).total_seconds() * 1000)
    if view.get("reportedBy") and m.get("name") == view["reportedBy"]:
        return "self"
    return NONE


def human_age(ms: float) -> str:
    """12ms, 1.5s, 45s, 3m, 5h, 2d: milliseconds under a second (heartbeat ages), then the
    coarse units kubectl's AGE column uses."""
    ms = max(0.0, float(ms))
    if ms < 1000:
        return f"{int(ms)}ms"
    s = ms / 1000
    if s < 10:
        return f"{s:.1f}s"
    if s < 120:
        return f"{int(s)}s"
    if s < 3 * 3600:
        return f"{int(s // 60)}m"
    if s < 48 * 3600:
        return f"{int(s // 3600)}h"
    return f"{int(s // 86400)}d"


def _number(value: Any) -> str:
    return NONE if value is None else str(value)


def _columns(rows: Iterable[tuple[str, ...]]) -> str:
    """Left-aligned columns three spaces apart, as kubectl's tabwriter prints them."""
    rows = list(rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows) + "\n"
