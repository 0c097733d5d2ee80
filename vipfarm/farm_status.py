"""The assignment as a Farm's status stores it, and what one node serves from it.

The operator writes `status.assignment = {encoding: z1, members, data, epoch}` (and
`status.epoch`); every agent reads its own buckets from it. An unreadable stored assignment
is an error, never "no assignment": treating it as absent would make the operator deal
every bucket afresh and the agents drop the buckets they serve.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .assignment import Assignment


class CorruptAssignment(ValueError):
    """status.assignment is present but cannot be read; the message says why and how to fix it."""


def repair_hint(farm: str) -> str:
    return (f"restore it, or clear it with `kubectl patch farm {farm} --subresource=status --type=merge "
            f"-p '{{\"status\":{{\"assignment\":null}}}}'` so the operator deals a fresh one "
            f"(that moves buckets, and resets their connections)")


def stored_epoch(status: Mapping[str, Any] | None) -> int:
    """The newest epoch the status names (its assignment's, or status.epoch), 0 when none."""
    status = status or {}
    a = status.get("assignment") or {}
    epochs = []
    for raw in (a.get("epoch") if isinstance(a, Mapping) else None, status.get("epoch")):
        try:
            epochs.append(int(raw or 0))
        except (TypeError, ValueError):
            epochs.append(0)
    return max(epochs)


def stored_assignment(status: Mapping[str, Any] | None) -> Assignment | None:
    """The assignment a Farm status holds; None when it holds none. Raises CorruptAssignment."""
    a = (status or {}).get("assignment")
    if not a:
        return None
    if not isinstance(a, Mapping):
        raise CorruptAssignment(f"status.assignment is a {type(a).__name__}, not a mapping")
    if not isinstance(a.get("data"), str) or not a["data"]:
        # The operator always writes data with the members and the epoch: without it the rest
        # says an assignment was there, and reading that as "none" would deal every bucket anew.
        raise CorruptAssignment(f"status.assignment has no data (data={a.get('data')!r})")
    members = a.get("members") or []
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise CorruptAssignment(f"status.assignment.members={members!r} is not a list of node names")
    try:
        return Assignment.decode(members, a["data"])
    except (ValueError, TypeError) as e:
        raise CorruptAssignment(f"status.assignment.data cannot be decoded: {e}") from None


def assignment_status(assignment: Assignment, epoch: int) -> dict[str, Any]:
    return {"encoding": "z1", "members": list(assignment.members), "data": assignment.encode(), "epoch": epoch}


@dataclass(frozen=True)
class ServedBuckets:
    """What an agent applies for one Farm."""
    buckets: frozenset[int]
    epoch: int
    servable: bool          # False while the Farm is in Conflict: no node may serve it


def served_buckets(status: Mapping[str, Any] | None, node: str) -> ServedBuckets:
    """The buckets `node` serves per a Farm status. Raises CorruptAssignment."""
    status = status or {}
    epoch = stored_epoch(status)
    if status.get("phase") == "Conflict":
        return ServedBuckets(frozenset(), epoch, False)
    a = stored_assignment(status)
    return ServedBuckets(frozenset(a.owned_by(node)) if a else frozenset(), epoch, True)
