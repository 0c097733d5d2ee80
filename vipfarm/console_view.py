"""What the web console shows of each farm, computed from farm views. Pure.

The console (nodeagent/console.py) gets farm views (vipfarm/status_view.py, FARM_VIEW_FIELDS)
from its source and answers the page's polls with `console_document`. Everything the page
decides is decided here, so it is tested here and the same for every viewer: each owner's
colour, the legend's shares, the members' rows with their health and checks, the timeline
(newest first) and the packet rates, which need two polls and so live in the shell's memory
as CounterSamples. The page itself only draws what it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from vipfarm.status_view import owner_shares

# Okabe & Ito's eight colours, distinguishable with the common colour-vision deficiencies;
# the yellow and the black are last, being the hardest to read a grid of.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
UNOWNED_COLOUR = "#d4d4d4"
GOLDEN_ANGLE_TENTHS = 1375          # 137.5 degrees: consecutive extra hues land far apart


def colour_for_index(i: int) -> str:
    """The i-th member's colour: the palette, then hues spread by the golden angle (a farm may
    have 64 members, more than any palette tells apart; past eight, the legend disambiguates)."""
    if i < len(PALETTE):
        return PALETTE[i]
    hue = ((i - len(PALETTE)) * GOLDEN_ANGLE_TENTHS // 10 + 15) % 360
    return f"hsl({hue}, 60%, {42 if i % 2 else 58}%)"


def owner_colours(members: Iterable[str], owners: Iterable[str | None] = ()) -> dict[str, str]:
    """Each owner's colour, by its place in the farm's configured members. A failover or a drain
    changes a member's state, never the member list, so a node keeps its colour while its
    buckets move, which is what the eye follows. An owner the member list lacks (a view older
    than a configuration change) comes after the members, in name order."""
    names = list(dict.fromkeys(members))
    names += sorted({o for o in owners if o is not None} - set(names))
    return {name: colour_for_index(i) for i, name in enumerate(names)}


@dataclass(frozen=True)
class CounterSample:
    """The accepted-packet counters of every (farm, node) that answered, at one moment
    (seconds on a monotonic clock)."""
    at: float
    accepted: Mapping[tuple[str, str], int]


def counter_sample(views: Iterable[Mapping[str, Any]], at: float) -> CounterSample:
    accepted = {}
    for view in views:
        for m in view.get("members") or ():
            value = ((m.get("local") or {}).get("counters") or {}).get("accepted")
            if isinstance(value, int) and not isinstance(value, bool):
                accepted[(view["name"], m.get("name"))] = value
    return CounterSample(at, accepted)


def packet_rates(before: CounterSample | None, now: CounterSample) -> dict[tuple[str, str], float | None]:
    """Accepted packets per second of each (farm, node) in `now` since `before`. None where no
    rate can be told: no earlier sample of it, no time between the two, or a counter that went
    down (its agent re-created the counters: README "Restarts")."""
    rates: dict[tuple[str, str], float | None] = {}
    for key, value in now.accepted.items():
        old = before.accepted.get(key) if before is not None else None
        dt = now.at - before.at if before is not None else 0.0
        rates[key] = (value - old) / dt if old is not None and dt > 0 and value >= old else None
    return rates


def _checks(local: Mapping[str, Any] | None) -> list[dict]:
    return [{"name": c.get("name"), "state": c.get("state"), "lastRun": c.get("lastRun"),
             "recoveryRuns": c.get("recoveryRuns") or 0}
            for c in (local or {}).get("checks") or ()]


def console_farm(view: Mapping[str, Any], rates: Mapping[tuple[str, str], float | None]) -> dict:
    """One farm as the page draws it: the bucket map (owner names, None for no owner), the
    legend (each owner's colour and share, then the unowned buckets if any), the members'
    rows and the timeline, newest event first."""
    members = list(view.get("members") or ())
    owners = list(view.get("owners") or ())
    colours = owner_colours((m.get("name") for m in members), owners)
    shares = owner_shares(view)
    total = len(owners)

    def share(name: str | None, colour: str) -> dict:
        n = shares.get(name, 0)
        return {"owner": name, "colour": colour, "buckets": n, "percent": round(100.0 * n / total, 1) if total else 0.0}

    legend = [share(name, colour) for name, colour in colours.items()]      # a lost member at 0 too
    if shares.get(None):
        legend.append(share(None, UNOWNED_COLOUR))
    rows = []
    for m in members:
        local = m.get("local")
        checks = _checks(local)
        rows.append({
            "name": m.get("name"), "address": m.get("address"), "weight": m.get("weight"),
            "state": m.get("state"), "reason": m.get("reason"), "buckets": shares.get(m.get("name"), 0),
            "lastHeardMs": m.get("lastHeardMs"), "handingOver": bool(m.get("handingOver")),
            "colour": colours.get(m.get("name"), UNOWNED_COLOUR),
            "answered": local is not None,
            "ready": (local or {}).get("ready"),
            "ownedBuckets": (local or {}).get("ownedBuckets"),
            "checks": checks,
            "recoveryRuns": sum(c["recoveryRuns"] for c in checks),
            "accepted": ((local or {}).get("counters") or {}).get("accepted"),
            "packetsPerSecond": rates.get((view.get("name"), m.get("name"))),
        })
    return {
        "name": view.get("name"), "vips": list(view.get("vips") or ()), "buckets": view.get("buckets") or total,
        "view": list(view.get("view") or ()), "agreed": bool(view.get("agreed")),
        "baseEpoch": view.get("baseEpoch"), "reportedBy": view.get("reportedBy"),
        "owners": owners, "colours": {**colours, "": UNOWNED_COLOUR}, "legend": legend,
        "members": rows, "lastFailover": view.get("lastFailover"),
        "timeline": [dict(e) for e in reversed(list(view.get("events") or ()))],
    }


def console_document(views: Iterable[Mapping[str, Any]], errors: Iterable[str],
                     rates: Mapping[tuple[str, str], float | None], *, mode: str, actions: bool,
                     generated_at: str) -> dict:
    """The JSON body of GET /api/farms."""
    return {"generatedAt": generated_at, "mode": mode, "actions": actions, "errors": list(errors),
            "farms": [console_farm(v, rates) for v in views]}
