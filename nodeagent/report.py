"""What the agent writes into its FarmNode, and when: pure functions, no I/O.

The agent keeps one FarmNode per Node (named after it). Its status.farms holds one report
per Farm that selects the node. Writes are merge patches of only the entries that changed
(null removes a Farm that is gone), and they are paced:

* a change the operator acts on (ready, reason, released, dataplane mode, error, checks)
  is written at once, but at most one write per URGENT_GAP seconds;
* a change only of appliedEpoch (every agent has one after every rebalance) waits until the
  Farm watch has been quiet for QUIET seconds, and at most LAZY_MAX seconds, so a burst
  of Farm updates costs each agent one write, after the operator's own writes;
* with nothing to say the agent refreshes reportedAt once per refresh period (>= 30 s).
  Liveness between members never rides on these writes.
"""
from __future__ import annotations

from typing import Any, Mapping

from vipfarm.reports import decision_view, farms_changed

URGENT_GAP = 1.0
QUIET = 2.0
LAZY_MAX = 10.0


def farms_patch(written: Mapping[str, Mapping[str, Any]],
                wanted: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The merge patch of status.farms that turns what is written into what is wanted."""
    patch: dict[str, Any] = {f: dict(r) for f, r in wanted.items() if written.get(f) != r}
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
