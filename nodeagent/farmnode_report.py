"""What the agent writes into its FarmNode, and when: pure functions, no I/O.

What: wanted() turns the listed Farms and this Node's labels into the Farms to program and a
draft report per selected Farm; settled() completes the drafts once the dataplane change has
run (or failed). A Farm being deleted is reported `released` only by settled(), after a
dataplane change without it succeeded: the operator's finalizer lets the Farm go on that
word, so it must never come before the node has let go of the VIP.

The agent keeps one FarmNode per Node (named after it). Its status.farms holds one report
per Farm that selects the node. Writes are merge patches of only the entries that changed
(null removes a Farm that is gone), and they are paced:

* a change the operator acts on (ready, reason, released, dataplane mode, error, checks,
  heartbeat address, membership) is written at once, but at most one write per URGENT_GAP
  seconds;
* a change only of appliedEpoch (every agent has one after every rebalance) waits until the
  Farm watch has been quiet for QUIET seconds, and at most LAZY_MAX seconds, so a burst
  of Farm updates costs each agent one write, after the operator's own writes;
* with nothing to say the agent refreshes reportedAt once per refresh period (>= 30 s).
  Liveness between members never rides on these writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vipfarm.conflicts import claimed_elsewhere, farm_ref
from vipfarm.farm_status import CorruptAssignment, served_buckets, stored_epoch
from vipfarm.membership import selects
from vipfarm.reports import decision_view, farms_changed
from vipfarm.spec import FarmSpecError, parse_farm

from .filter_plan import FarmOwnership

URGENT_GAP = 1.0
QUIET = 2.0
LAZY_MAX = 10.0


@dataclass(frozen=True)
class Wanted:
    serve: tuple[FarmOwnership, ...]      # what NodeDataplanes.program() is given
    drafts: dict[str, dict[str, Any]]     # a report per selected Farm, before the change ran
    deleting: frozenset[str]              # selected Farms being deleted (to be released)


def wanted(farms: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], node: str,
           serving_now: Mapping[str, frozenset[int]] | None = None) -> Wanted:
    """The Farms this node serves with their buckets, and a draft report for each selected one.

    serving_now: the buckets the dataplane holds per Farm. A Farm whose stored assignment is
    unreadable keeps exactly those (never none: dropping them would reset their connections),
    and its report says what is wrong."""
    serving_now = serving_now or {}
    serve: list[FarmOwnership] = []
    drafts: dict[str, dict[str, Any]] = {}
    deleting: set[str] = set()
    # The operator's conflict rule, applied locally too: a Farm whose VIP an earlier Farm
    # holds must never reach the dataplane, even before the operator has marked it.
    refs = [farm_ref(b) for b in farms.values()]
    for name, body in sorted(farms.items()):
        spec = body.get("spec") or {}
        if not selects(spec.get("nodeSelector") or {}, labels):
            continue
        if body["metadata"].get("deletionTimestamp"):
            drafts[name] = {"ready": False, "reason": "Deleting", "released": False}
            deleting.add(name)
            continue
        try:
            farm = parse_farm(body)
        except FarmSpecError as e:
            drafts[name] = {"ready": False, "reason": "InvalidSpec", "lastError": str(e)[:1000]}
            continue
        status = body.get("status") or {}
        if status.get("phase") == "Conflict" or claimed_elsewhere(farm_ref(body), refs):
            drafts[name] = {"ready": False, "reason": "Conflict", "appliedEpoch": stored_epoch(status)}
            continue
        try:
            served = served_buckets(status, node)
        except CorruptAssignment as e:
            if name in serving_now:
                problem = f"AssignmentUnreadable: {e}; keeping the buckets this node serves until it is repaired"
                serve.append(FarmOwnership(farm, serving_now[name]))
                drafts[name] = {"ready": True, "reason": "", "lastError": problem[:1000]}
            else:
                problem = f"AssignmentUnreadable: {e}; this node serves none of it until it is repaired"
                drafts[name] = {"ready": False, "reason": "AssignmentUnreadable", "lastError": problem[:1000]}
            continue
        serve.append(FarmOwnership(farm, served.buckets))
        drafts[name] = {"ready": True, "reason": "", "appliedEpoch": served.epoch, "lastError": ""}
    return Wanted(tuple(serve), drafts, frozenset(deleting))


def with_buckets(w: Wanted, owned: Mapping[str, frozenset[int]],
                 moving: Mapping[str, frozenset[int]] | None = None) -> Wanted:
    """`w` with the buckets of the Farms in `owned` replaced (cluster mode: the heartbeat
    engine's decisions, instead of the operator's assignment as it stands), and their moving
    buckets (handover) from `moving`."""
    moving = moving or {}
    serve = tuple(FarmOwnership(i.farm, frozenset(owned[i.farm.name]), frozenset(moving.get(i.farm.name, ())))
                  if i.farm.name in owned else i for i in w.serve)
    return Wanted(serve, w.drafts, w.deleting)


def with_heartbeats(reports: Mapping[str, dict[str, Any]], addresses: Mapping[str, str | None],
                    memberships: Mapping[str, Mapping[str, Any]], key_problem: str,
                    multi_member: set[str] | frozenset[str]) -> dict[str, dict[str, Any]]:
    """The reports with this node's heartbeat address and membership per Farm. Without a
    usable heartbeat key (key_problem), a Farm of several members is reported not ready
    (reason HeartbeatKeyUnusable, the problem in lastError), so the operator deals it no buckets."""
    out = {name: dict(r) for name, r in reports.items()}
    for name, r in out.items():
        if addresses.get(name):
            r["address"] = addresses[name]
        if name in memberships:
            r["membership"] = dict(memberships[name])
        if key_problem and name in multi_member and r.get("ready"):
            r.update({"ready": False, "reason": "HeartbeatKeyUnusable", "lastError": key_problem[:1000]})
    return out


def settled(w: Wanted, error: str | None, modes: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The reports once NodeDataplanes.program(w.serve) has run: `error` is None when it
    succeeded (then no Farm outside w.serve is held any more), else what failed; `modes` is
    the XDP mode per interface after it."""
    reports = {name: dict(r) for name, r in w.drafts.items()}
    for item in w.serve:
        r = reports[item.farm.name]
        if error is None:
            r["dataplaneMode"] = modes.get(item.farm.interface, "")
        else:
            r.update({"ready": False, "reason": "DataplaneError", "lastError": error[:1000]})
    for name in w.deleting:
        if error is None:
            reports[name]["released"] = True
        else:
            # The node may still hold the VIP: say why, and let the finalizer keep waiting.
            reports[name]["lastError"] = error[:1000]
    return reports


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, nested
    objects as their own patches, and null for every key `new` no longer has (a merge patch
    keeps whatever it does not name: without the nulls, a key dropped from a nested object,
    such as membership.withdrawn, would stay in the FarmNode for ever)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    out: dict[str, Any] = {}
    for k, v in new.items():
        if k not in old:
            out[k] = v
        elif old[k] != v:
            out[k] = merge_patch(old[k], v)
    out.update({k: None for k in old if k not in new})
    return out


def farms_patch(written: Mapping[str, Mapping[str, Any]],
                wanted: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The merge patch of status.farms that turns what is written into what is wanted."""
    patch: dict[str, Any] = {f: merge_patch(written.get(f) or {}, dict(r)) for f, r in wanted.items()
                             if written.get(f) != r}
    patch.update({f: None for f in written if f not in wanted})
    return patch


def is_urgent(written: Mapping[str, Mapping[str, Any]], wanted: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether the difference touches anything the operator decides on."""
    return bool(farms_changed(decision_view(written), decision_view(wanted)))


def seconds_until_write(now: float, *, pending: bool, urgent: bool, last_write: float,
                        last_event: float, pending_since: float, refresh_s: float) -> float:
    """How long the agent waits before its next FarmNode write (0: write now)."""
    due = last_write + refresh_s
    if urgent:
        due = min(due, last_write + URGENT_GAP)
    elif pending:
        due = min(due, max(last_write + URGENT_GAP, min(last_event + QUIET, pending_since + LAZY_MAX)))
    return max(0.0, due - now)


def status_patch(farms_delta: Mapping[str, Any], wanted: Mapping[str, Mapping[str, Any]],
                 reported_at: str, version: str) -> dict[str, Any]:
    """The whole merge patch body for the FarmNode status subresource."""
    return {"status": {"farms": dict(farms_delta), "reportedAt": reported_at, "agentVersion": version,
                       "farmCount": len(wanted),
                       "readyCount": sum(1 for r in wanted.values() if r.get("ready"))}}


def farmnode_object(node: str, node_uid: str | None, api_version: str) -> dict[str, Any]:
    """A new, empty FarmNode for this node, owned by the Node so it goes when the Node goes."""
    md: dict[str, Any] = {"name": node, "labels": {"app.kubernetes.io/name": "vipfarm",
                                                   "app.kubernetes.io/component": "agent"}}
    if node_uid:
        md["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]
    return {"apiVersion": api_version, "kind": "FarmNode", "metadata": md}
