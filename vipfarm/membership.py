"""Which Nodes are members of a Farm, and on what terms (cluster mode).

A Node is a candidate member of a Farm when its labels match spec.nodeSelector. It serves
only when it is Ready, not cordoned (spec.unschedulable) and not annotated
vipfarm.io/drain=true, and its agent reported ready (vipfarm.decisions reads that).
Its weight comes from the annotation (or label) vipfarm.io/weight, default 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

WEIGHT_KEY = "vipfarm.io/weight"
DRAIN_KEY = "vipfarm.io/drain"
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class NodeInfo:
    """A Node object, reduced to what membership reads."""
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    unschedulable: bool = False
    draining: bool = False
    weight: int = 1
    weight_problem: str = ""


def node_info(name: str, labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None,
              conditions: list[Mapping[str, Any]] | None, unschedulable: bool | None) -> NodeInfo:
    labels = dict(labels or {})
    annotations = dict(annotations or {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in (conditions or []))
    raw = annotations.get(WEIGHT_KEY, labels.get(WEIGHT_KEY))
    weight, problem = 1, ""
    if raw is not None:
        try:
            weight = int(raw)
            if not 0 <= weight <= MAX_WEIGHT:
                raise ValueError
        except ValueError:
            weight = 1
            problem = (f"Node {name} {WEIGHT_KEY}={raw!r} is not an integer between 0 and {MAX_WEIGHT}; "
                       f"using weight 1 (fix: kubectl annotate node {name} {WEIGHT_KEY}=2 --overwrite)")
    draining = drain_annotation_set(annotations.get(DRAIN_KEY))
    return NodeInfo(name, labels, ready, bool(unschedulable), draining, weight, problem)


def drain_annotation_set(value: Any) -> bool:
    """Whether a vipfarm.io/drain annotation value asks for a drain: "true" (what `vipfarm
    drain` writes), also "1" or "yes", in any case. Anything else, or no annotation, does not."""
    return value is not None and str(value).lower() in ("true", "1", "yes")


def node_drain_requested(node_obj: Mapping[str, Any] | None) -> bool:
    """Whether a Node object (as the API returns it) asks its vipfarm agent to drain: it is
    cordoned (`kubectl cordon`: spec.unschedulable true) or annotated vipfarm.io/drain=true
    (`vipfarm drain NODE`). Missing or null parts of the object count as not asking."""
    if not isinstance(node_obj, Mapping):
        return False
    spec = node_obj.get("spec")
    if isinstance(spec, Mapping) and spec.get("unschedulable") is True:
        return True
    meta = node_obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return isinstance(annotations, Mapping) and drain_annotation_set(annotations.get(DRAIN_KEY))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a Farm's nodeSelector matches a Node's labels (an empty selector matches all)."""
    return all(labels.get(k) == v for k, v in selector.items())
