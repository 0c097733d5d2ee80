"""What an agent says about itself over HTTP (nodeagent/observe.py): the /status document, the
readiness verdict, each member's state and reason, and the heartbeat rejection reasons. Pure:
the shell gathers the plain inputs below (snapshots the agent's threads published, the pinned
counters) and both renderings, the JSON here and the Prometheus families in
nodeagent/agent_metrics.py, read the same inputs, so /status and /metrics never disagree.

The document's schema (schemaVersion 1) is the observability contract's; README "Metrics and
health endpoints" describes every field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .farm_timeline import Timeline, TimelineEvent
from .handover import HandoverTotals

SCHEMA_VERSION = 1

SERVING, OUT, WITHDRAWN, DRAINING, DRAINED = "Serving", "Out", "Withdrawn", "Draining", "Drained"
CHECK_STATES = {"passing": "Passing", "failing": "Failing", "unknown": "Starting"}

# HeartbeatEngine counts -> the `reason` of a rejected heartbeat. The wire's reasons
# (vipfarm/heartbeat_wire.py REASONS) come as rejected_<reason>; the peer table's verdicts
# (vipfarm/liveness.py) as heartbeat_<verdict>.
REJECTION_REASONS = {
    "rejected_truncated": "truncated", "rejected_too_large": "too_large", "rejected_bad_magic": "bad_magic",
    "rejected_bad_version": "bad_version", "rejected_bad_kind": "bad_kind", "rejected_unknown_key": "unknown_key",
    "rejected_bad_mac": "bad_mac", "rejected_malformed": "malformed", "rejected_unknown_farm": "unknown_farm",
    "heartbeat_replayed": "replay", "heartbeat_old_boot": "old_boot", "heartbeat_not_member": "not_member",
}
# Not a rejection: heartbeat_pending_echo, a restarted peer's first heartbeats before it echoes
# this node's boot id (normal once per peer start; an alert on rejections must not fire on it).
ALWAYS_SHOWN_REASONS = ("bad_mac", "replay", "malformed")


@dataclass(frozen=True)
class MemberInput:
    name: str
    address: str
    weight: int


@dataclass(frozen=True)
class CheckInput:
    name: str
    state: str                              # vipfarm.checks: unknown, passing, failing
    last_run: str                           # RFC 3339, "" before the first probe
    runs: Mapping[str, int]                 # pass / fail / timeout -> count
    recovery_runs: Mapping[str, int]        # ok / failed -> count


@dataclass(frozen=True)
class FarmInput:
    """One farm as the agent sees it at the moment of the request."""
    name: str
    vips: tuple[str, ...]
    interface: str
    buckets: int
    members: tuple[MemberInput, ...]        # configured, this node included
    programmed: bool                        # this agent has programmed the farm's filter
    view: frozenset[str] = frozenset()
    agreed: bool = False
    base_epoch: int = 0
    withdrawn: frozenset[str] = frozenset()
    draining: frozenset[str] = frozenset()
    handing_over: frozenset[str] = frozenset()   # members that still serve flows in buckets they gave up
    owners: tuple[str | None, ...] = ()     # the effective assignment (empty outside a view)
    owned: int = 0                          # buckets this node's filter holds now
    counters: Mapping[str, int] = field(default_factory=dict)        # the filter's, by COUNTER_NAMES
    heartbeat_counts: Mapping[str, int] = field(default_factory=dict)   # HeartbeatEngine's, this farm's
    last_heard_ms: Mapping[str, int] = field(default_factory=dict)      # peer -> ms since accepted
    timeout_ms: int = 0
    self_reason: str = ""                   # why this node is withdrawn (a Health reason), when it is
    checks: tuple[CheckInput, ...] = ()
    handover: HandoverTotals = HandoverTotals()
    flows_left: int = 0
    timeline: Timeline = Timeline()


@dataclass(frozen=True)
class AgentInput:
    node: str
    mode: str                               # standalone | cluster
    generated_at: str                       # RFC 3339 UTC
    farms: tuple[FarmInput, ...]
    heartbeat_counts: Mapping[str, int] = field(default_factory=dict)   # the engine's, every farm's and none's


def rejected_by_reason(counts: Mapping[str, int]) -> dict[str, int]:
    out = {r: 0 for r in ALWAYS_SHOWN_REASONS}
    for key, reason in REJECTION_REASONS.items():
        if counts.get(key):
            out[reason] = out.get(reason, 0) + counts[key]
    return out


def member_state(f: FarmInput, name: str, node: str) -> tuple[str, str]:
    """(state, reason) of one member as this node sees it."""
    if name not in f.view:
        if name == node:
            return OUT, "NoQuorum" if f.programmed else "Starting"
        return OUT, "HeartbeatTimeout" if name in f.last_heard_ms else "NeverHeard"
    if name in f.withdrawn:
        return WITHDRAWN, (f.self_reason or "Starting") if name == node else "ChecksFailing"
    if name in f.draining:
        return (DRAINING if name in f.handing_over else DRAINED), "Drain"
    return SERVING, "InView"


def farm_not_ready(f: FarmInput) -> str | None:
    """Why the farm is not ready on this node (one line), None when it is: its filter is
    programmed and, in a farm of several members, a peer's heartbeat was accepted within
    timeoutMs."""
    if not f.programmed:
        return f"farm {f.name}: the dataplane is not programmed yet"
    if len(f.members) > 1 and not any(ms <= f.timeout_ms for ms in f.last_heard_ms.values()):
        return f"farm {f.name}: no heartbeat from any peer accepted within timeoutMs ({f.timeout_ms} ms)"
    return None


def _event(e: TimelineEvent) -> dict:
    return {"at": e.at, "kind": e.kind, "nodes": list(e.nodes), "durationMs": e.duration_ms}


def farm_document(f: FarmInput, node: str) -> dict:
    counts = _owner_counts(f.owners)
    members = []
    for m in f.members:
        state, reason = member_state(f, m.name, node)
        members.append({"name": m.name, "address": m.address, "weight": m.weight, "state": state, "reason": reason,
                        "buckets": counts.get(m.name, 0),
                        "lastHeardMs": None if m.name == node else f.last_heard_ms.get(m.name),
                        "handingOver": m.name in f.handing_over})
    lf = f.timeline.last_failover
    hc = f.heartbeat_counts
    return {
        "name": f.name, "vips": list(f.vips), "interface": f.interface, "buckets": f.buckets,
        "view": sorted(f.view), "agreed": f.agreed, "baseEpoch": f.base_epoch,
        "members": members,
        "owners": list(f.owners) if f.owners else [None] * f.buckets,
        "ownedBuckets": f.owned,
        "counters": dict(f.counters),
        "heartbeats": {"sent": hc.get("sent", 0), "received": hc.get("heartbeat_accepted", 0),
                       "rejected": rejected_by_reason(hc)},
        "checks": [{"name": c.name, "state": CHECK_STATES.get(c.state, c.state), "lastRun": c.last_run or None,
                    "recoveryRuns": sum(c.recovery_runs.values())} for c in f.checks],
        "handover": {"active": f.flows_left > 0 or node in f.handing_over, "flowsLeft": f.flows_left,
                     "flowsDrained": f.handover.flows_drained, "flowsCut": f.handover.flows_cut},
        "lastFailover": None if lf is None else {"at": lf.at, "lost": list(lf.nodes), "durationMs": lf.duration_ms},
        "events": [_event(e) for e in f.timeline.events],
    }


def _owner_counts(owners: tuple[str | None, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in owners:
        if o is not None:
            out[o] = out.get(o, 0) + 1
    return out


def status_document(a: AgentInput) -> dict:
    """The /status JSON (schemaVersion 1)."""
    return {"schemaVersion": SCHEMA_VERSION, "node": a.node, "mode": a.mode,
            "ready": all(farm_not_ready(f) is None for f in a.farms), "generatedAt": a.generated_at,
            "farms": [farm_document(f, a.node) for f in a.farms]}
